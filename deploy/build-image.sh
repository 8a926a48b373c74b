#!/usr/bin/env bash
# Builds the plugin image without a registry or a container engine, on a Debian 12 machine, as root:
#   deploy/build-image.sh [--out DIR]          (default DIR: dist/)
# writes DIR/cc-gpu-<version>.oci.tar (an OCI image archive, tag cc-gpu:<version>), its SBOM
# DIR/cc-gpu-<version>.cdx.json (CycloneDX 1.6, schema-checked) and DIR/cc-gpu-<version>.digest, and prints the
# manifest digest. Needs the Debian packages buildah, debootstrap and python3-venv (tests/setup/debian-packages.txt),
# and network access to Debian's mirror and PyPI.
#
# The image: a Debian 12 root filesystem from debootstrap (variant minbase plus RUNTIME_PACKAGES, security updates
# applied), a virtualenv in /opt/cc-gpu with the project's wheel and the exact, hash-checked dependencies of
# deploy/requirements.txt (binary wheels only, nothing compiled; unused parts pruned by deploy/image/prune.sh), no
# package lists, caches, docs, logs or pip. The layer is gzip-compressed.
# deploy/Containerfile declares the same image for admins who build with a container engine;
# tests/deploy/test_image.py compares the two.
#
# Reproducibility: SOURCE_DATE_EPOCH (default: the last commit's time) sets every file's mtime, the image's creation
# time and the SBOM's timestamp; the wheel is built from pinned tools. Two builds from the same inputs on the same
# day give the same image digest and the same SBOM (the .oci.tar file itself differs in its outer tar headers' times);
# across days the digest changes when Debian publishes new package versions (the mirror serves only the current
# ones; the SBOM lists what went in).
set -euo pipefail
export LC_ALL=C.UTF-8 TZ=UTC

# --- What the image is (tests/deploy/test_image.py reads these and compares them with deploy/Containerfile) ---
DEBIAN_SUITE=bookworm
RUNTIME_PACKAGES=(python3 kmod ca-certificates)
VENV=/opt/cc-gpu
IMAGE_USER=65532:65532
IMAGE_ENTRYPOINT='["cc-gpu"]'
IMAGE_CMD='["plugin"]'
IMAGE_PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_SOURCE="${IMAGE_SOURCE:-https://github.com/cc-gpu/cc-gpu}"
IMAGE_LICENSES=Apache-2.0
# ---

MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="$repo/dist"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
        *) echo "usage: $0 [--out DIR]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "build-image.sh: run as root (debootstrap and buildah's chroot isolation need it)" >&2; exit 2; }
for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || { echo "build-image.sh: $tool is missing (tests/setup/install-system-packages.sh)" >&2; exit 2; }
done
PY=/usr/bin/python3
version="$($PY -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$repo/pyproject.toml")"
revision="${IMAGE_REVISION:-$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)}"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}"
created="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
name="cc-gpu-$version"
cache="${CC_GPU_CACHE:-$HOME/.cache/cc-gpu}/image-build"
mkdir -p "$cache" "$out"

work="$(mktemp -d /var/tmp/cc-gpu-image.XXXXXX)"
# A private buildah store, removed at the end: nothing is left in the machine's container storage.
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
bah=(buildah --root "$work/storage" --runroot "$work/run" --storage-driver vfs)
ctr=""
cleanup() {
    if [ -n "$ctr" ]; then "${bah[@]}" umount "$ctr" >/dev/null 2>&1 || true; "${bah[@]}" rm "$ctr" >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
step() { echo "== $* ($(date -u +%T))"; }

# 1. Build tools, pinned with hashes, in a venv cached by the lock's hash (never in the image).
tools="$cache/tools-$(sha256sum "$repo/deploy/image/build-requirements.txt" | cut -c1-16)"
if [ ! -f "$tools/.complete" ]; then
    step "build tools"
    rm -rf "$tools"
    $PY -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-hashes --only-binary=:all: \
        --requirement "$repo/deploy/image/build-requirements.txt"
    touch "$tools/.complete"
fi

# 2. The project's wheel, built from a clean copy of the sources (no build/ or egg-info left in the tree), and the
#    dependencies' wheels, downloaded once and checked against the lock's hashes.
step "wheels"
mkdir -p "$work/src" "$work/wheels"
tar -C "$repo" --exclude=__pycache__ -c pyproject.toml README.md cc_gpu | tar -C "$work/src" -x
"$tools/bin/pip" wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation --wheel-dir "$work/wheels" \
    "$work/src" >/dev/null
wheelhouse="$cache/wheels-$(sha256sum "$repo/deploy/requirements.txt" | cut -c1-16)"
if [ ! -f "$wheelhouse/.complete" ]; then
    rm -rf "$wheelhouse"
    "$tools/bin/pip" download --quiet --disable-pip-version-check --no-deps --require-hashes --only-binary=:all: \
        --dest "$wheelhouse" --requirement "$repo/deploy/requirements.txt"
    touch "$wheelhouse/.complete"
fi
cp "$wheelhouse"/*.whl "$work/wheels/"
"$tools/bin/pip" download --quiet --disable-pip-version-check --no-deps --require-hashes --only-binary=:all: \
    --dest "$work/pip" --requirement <(awk '/^pip==/ {p = 1} p {print; if ($0 !~ /\\$/) exit}' "$repo/deploy/image/build-requirements.txt")
pip_wheel="$(ls "$work"/pip/pip-*.whl)"

# 3. The root filesystem: debootstrap into the working container's mount (the .debs are cached).
step "debootstrap $DEBIAN_SUITE (minbase + ${RUNTIME_PACKAGES[*]})"
ctr="$("${bah[@]}" from --quiet scratch)"
mnt="$("${bah[@]}" mount "$ctr")"
mkdir -p "$cache/debs"
include="$(IFS=,; echo "${RUNTIME_PACKAGES[*]}")"
debootstrap --variant=minbase --include="$include" --components=main --cache-dir="$cache/debs" \
    "$DEBIAN_SUITE" "$mnt" "$MIRROR" > "$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
grep "Release signature" "$work/debootstrap.log"   # debootstrap checks the archive's signature with Debian's keyring
run() { "${bah[@]}" run --isolation chroot "$ctr" -- "$@"; }

step "security updates"
cat > "$mnt/etc/apt/sources.list" <<EOF
deb $MIRROR $DEBIAN_SUITE main
deb $MIRROR $DEBIAN_SUITE-updates main
deb $SECURITY_MIRROR $DEBIAN_SUITE-security main
EOF
run sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq --no-install-recommends upgrade' \
    > "$work/apt.log" 2>&1 || { tail -30 "$work/apt.log" >&2; exit 1; }

# 4. The virtualenv: pip runs from its wheel (it is not installed), dependencies only from the checked wheels.
step "virtualenv $VENV"
run python3 -m venv --without-pip "$VENV"
mkdir -p "$mnt/tmp/build"
cp -r "$work/wheels" "$pip_wheel" "$repo/deploy/requirements.txt" "$mnt/tmp/build/"
pip=("$VENV/bin/python" "/tmp/build/$(basename "$pip_wheel")/pip" --disable-pip-version-check --no-cache-dir)
run "${pip[@]}" install --quiet --no-index --find-links /tmp/build/wheels --no-deps --require-hashes \
    --only-binary=:all: --no-compile --requirement /tmp/build/requirements.txt
run "${pip[@]}" install --quiet --no-index --no-deps --no-compile /tmp/build/wheels/cc_gpu-"$version"-py3-none-any.whl
run "${pip[@]}" check
"$repo/deploy/image/prune.sh" "$mnt$VENV/lib/python3.11/site-packages" "$repo"
run useradd --system --uid "${IMAGE_USER%%:*}" --user-group --no-create-home --shell /usr/sbin/nologin cc-gpu

# 5. Nothing the plugin does not run: package lists and caches, docs, logs, pip, build leftovers.
step "clean"
rm -rf "$mnt"/tmp/build "$mnt"/var/lib/apt/lists/* "$mnt"/var/cache/apt/* "$mnt"/var/cache/debconf/*-old \
    "$mnt"/var/lib/dpkg/*-old "$mnt"/var/cache/ldconfig/aux-cache "$mnt"/var/log/* "$mnt"/root/.cache \
    "$mnt"/usr/share/man/* "$mnt"/usr/share/info/* "$mnt"/usr/share/locale/* "$mnt"/usr/share/lintian \
    "$mnt"/usr/share/doc-base
# Documentation goes; each package's copyright file stays (licence notices).
find "$mnt/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$mnt/usr/share/doc" -mindepth 1 -type d -empty -delete
# Byte code written while building (it records build times); Python runs from sources (PYTHONDONTWRITEBYTECODE).
find "$mnt" -xdev -name __pycache__ -type d -prune -exec rm -rf {} +
: > "$mnt/etc/machine-id"
rm -f "$mnt/etc/hostname" "$mnt/etc/resolv.conf" "$mnt"/root/.*history
for path in "$mnt/usr/bin/gcc" "$mnt/usr/bin/cc" "$mnt/usr/bin/make"; do
    [ ! -e "$path" ] || { echo "build-image.sh: $path in the image" >&2; exit 1; }
done

# 6. Image configuration and commit; every file's mtime and the creation time are SOURCE_DATE_EPOCH.
step "commit"
"${bah[@]}" config --os linux --arch amd64 --workingdir / --user "$IMAGE_USER" \
    --entrypoint "$IMAGE_ENTRYPOINT" --cmd "$IMAGE_CMD" \
    --env PATH="$IMAGE_PATH" --env PYTHONDONTWRITEBYTECODE=1 --env PYTHONUNBUFFERED=1 \
    --label org.opencontainers.image.title=cc-gpu \
    --label org.opencontainers.image.description="DRA driver: VFIO passthrough of NVIDIA GPUs into confidential Kata VMs" \
    --label org.opencontainers.image.source="$IMAGE_SOURCE" \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.revision="$revision" \
    --label org.opencontainers.image.licenses="$IMAGE_LICENSES" \
    --label org.opencontainers.image.created="$created" \
    --created-by "deploy/build-image.sh" "$ctr"
archive="$out/$name.oci.tar"
rm -f "$archive"
"${bah[@]}" commit --quiet --identity-label=false --disable-compression=false --timestamp "$SOURCE_DATE_EPOCH" \
    "$ctr" "oci-archive:$archive:cc-gpu:$version" >/dev/null
digest="$(tar -xOf "$archive" index.json | $PY -c 'import json, sys; print(json.load(sys.stdin)["manifests"][0]["digest"])')"
echo "$digest" > "$out/$name.digest"

# 7. The SBOM: Debian packages and Python distributions (with the installed wheels' hashes), schema-checked.
step "sbom"
"$tools/bin/python" "$repo/deploy/image/sbom.py" generate --rootfs "$mnt" --wheels "$work/wheels" \
    --name cc-gpu --version "$version" --digest "$digest" --source "$IMAGE_SOURCE" --output "$out/$name.cdx.json"
"$tools/bin/python" "$repo/deploy/image/sbom.py" validate "$out/$name.cdx.json"

size="$(du -sm --apparent-size "$mnt" | cut -f1)"
echo "image: $archive"
echo "size: ${size} MB unpacked, $(( $(stat -c %s "$archive") / 1048576 )) MB archive"
echo "digest: $digest"
