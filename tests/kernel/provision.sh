#!/usr/bin/env bash
# Provisions the Debian-kernel tier of the real-kernel tests from Debian packages only, idempotently:
# QEMU and busybox-static are installed; Debian's 6.12 kernel image package is downloaded (not installed) and
# unpacked into the cache. The versioned package is resolved through the meta-package, since security updates
# remove older versioned packages from the mirror.
#
# Cache: ${CC_GPU_CACHE:-$HOME/.cache/cc-gpu}/debian-kernel/<package>/ (vmlinuz + lib/modules).
# Prints the kernel release directory (the unpacked package root) as the last line on stdout.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${CC_GPU_CACHE:-$HOME/.cache/cc-gpu}"
meta="${CC_GPU_KERNEL_META:-linux-image-6.12-amd64}"

"$here/apt-install.sh" qemu-system-x86 busybox-static zstd

resolve() {
    apt-cache depends "$meta" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1
}
pkg="$(resolve)"
if [ -z "$pkg" ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    pkg="$(resolve)"
fi
[ -n "$pkg" ] || { echo "cannot resolve $meta to a versioned kernel package" >&2; exit 1; }

dest="$cache/debian-kernel/$pkg"
if [ ! -f "$dest/.complete" ]; then
    mkdir -p "$cache/debian-kernel"
    exec 9>"$cache/debian-kernel/.lock"
    flock 9
    if [ ! -f "$dest/.complete" ]; then
        work="$(mktemp -d "$cache/debian-kernel/download.XXXXXX")"
        trap 'rm -rf "$work"' EXIT
        echo "downloading $pkg" >&2
        if ! (cd "$work" && apt-get download -qq "$pkg" >&2); then
            apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
            (cd "$work" && apt-get download -qq "$pkg" >&2)
        fi
        rm -rf "$dest"
        dpkg -x "$work"/*.deb "$work/root"
        mv "$work/root" "$dest"
        touch "$dest/.complete"
    fi
fi
echo "$dest"
