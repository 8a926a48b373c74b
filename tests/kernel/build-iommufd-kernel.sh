#!/usr/bin/env bash
# Builds the minimal kernel of the iommufd tier from Debian's linux-source-6.12 (Debian's own kernels ship with
# CONFIG_IOMMUFD off) and caches it under the hash of its configuration fragment (iommufd-kernel.config).
#
# Cache: ${CC_GPU_CACHE:-$HOME/.cache/cc-gpu}/iommufd-kernel/<hash>/bzImage. A cache hit costs nothing and needs no
# package; a miss installs linux-source-6.12 and the build tools and takes about 9 minutes on 2 cores.
# Progress goes to stderr; the last line on stdout is the path of the image.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${CC_GPU_CACHE:-$HOME/.cache/cc-gpu}"
fragment="$here/iommufd-kernel.config"
key="$(sha256sum <"$fragment" | cut -c1-16)"
out="$cache/iommufd-kernel/$key"
if [ -s "$out/bzImage" ]; then
    echo "$out/bzImage"
    exit 0
fi
mkdir -p "$cache/iommufd-kernel"
exec 9>"$cache/iommufd-kernel/.lock"
flock 9
if [ -s "$out/bzImage" ]; then
    echo "$out/bzImage"
    exit 0
fi
"$here/apt-install.sh" linux-source-6.12 make gcc flex bison bc libelf-dev libssl-dev xz-utils
tarball="$(ls /usr/src/linux-source-6.12.tar.xz)"
build="$cache/iommufd-kernel/build-$key"
rm -rf "$build"
mkdir -p "$build"
echo "extracting $tarball" >&2
tar -xf "$tarball" -C "$build" --strip-components=1
cd "$build"
make -s ARCH=x86_64 tinyconfig >&2
scripts/kconfig/merge_config.sh -m -O . .config "$fragment" >"$build/merge.log" 2>&1 || { cat "$build/merge.log" >&2; exit 1; }
make -s ARCH=x86_64 olddefconfig >&2
lost=()
while IFS= read -r line; do
    grep -qxF "$line" .config || lost+=("$line")
done < <(grep -E '^CONFIG_' "$fragment")
if [ ${#lost[@]} -gt 0 ]; then
    echo "kernel configuration lost these options (unmet dependencies): ${lost[*]}" >&2
    exit 1
fi
echo "building the iommufd kernel (about 9 minutes on 2 cores); log: $build/build.log" >&2
if ! nice -n 10 make ARCH=x86_64 -j"$(nproc)" bzImage >"$build/build.log" 2>&1; then
    tail -n 40 "$build/build.log" >&2
    exit 1
fi
mkdir -p "$out.tmp"
cp arch/x86/boot/bzImage "$out.tmp/bzImage"
cp .config "$out.tmp/config"
rm -rf "$out"
mv "$out.tmp" "$out"
cd /
rm -rf "$build"
echo "$out/bzImage"
