"""Builds the test guest's initramfs from what the host already has, and caches it.

The guest needs busybox (Debian's busybox-static), the kernel modules of the tier (decompressed, in load order),
and a Python to run the project's own binder: the Python running the tests (its binary at the same path, its
shared libraries and its standard library) is copied in (20-35 MB compressed), which boots several times faster
than sharing the host's whole root over 9p. The project itself is not in the image: the guest mounts it read-only
over 9p.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import kmod

HERE = Path(__file__).resolve().parent
INIT_SCRIPT = HERE / "guest" / "init.sh"
BUSYBOX = Path("/bin/busybox")
STDLIB_EXCLUDES = {"test", "idlelib", "tkinter", "lib2to3", "ensurepip", "turtledemo", "pydoc_data"}
# Pure-Python packages the binder imports in the guest, copied from the host's environment.
GUEST_PACKAGES = ("pyroute2",)


@dataclass(frozen=True)
class Kernel:
    """A bootable kernel: its image, its release, and its modules tree (None when everything is built in)."""

    image: Path
    release: str
    modules_dir: Path | None
    modules: tuple[str, ...] = ()


def debian_kernel(package_root: Path) -> Kernel:
    """The kernel unpacked from Debian's linux-image package by provision.sh."""
    images = sorted((package_root / "boot").glob("vmlinuz-*"))
    if not images:
        raise FileNotFoundError(f"no vmlinuz in {package_root / 'boot'}")
    release = images[-1].name.removeprefix("vmlinuz-")
    return Kernel(
        image=images[-1],
        release=release,
        modules_dir=package_root / "lib" / "modules" / release,
        modules=("vfio_pci", "vfio_iommu_type1", "9p", "9pnet_virtio", "virtio_rng"),
    )


def _python_parts() -> tuple[Path, Path]:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    executable = Path(sys.base_prefix) / "bin" / f"python{version}"
    stdlib = Path(sysconfig.get_paths(vars={"installed_base": sys.base_prefix, "base": sys.base_prefix})["stdlib"])
    return executable.resolve(), stdlib


def _shared_libraries(binaries: list[Path]) -> set[Path]:
    libs: set[Path] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            parts = line.split()
            for part in parts:
                if part.startswith("/"):
                    libs.add(Path(part))
    return libs


def _copy(src: Path, staging: Path) -> None:
    dest = staging / src.relative_to("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest, follow_symlinks=True)


def _package_dirs() -> list[Path]:
    dirs = []
    for name in GUEST_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"the guest needs the Python package {name!r}; install the project's test extra")
        dirs.append(Path(next(iter(spec.submodule_search_locations))))
    return dirs


def cache_key(kernel: Kernel) -> str:
    executable, stdlib = _python_parts()
    digest = hashlib.sha256()
    parts = (kernel.release, str(kernel.image), ",".join(kernel.modules), str(executable), sys.version, str(stdlib))
    for part in parts:
        digest.update(part.encode() + b"\0")
    for path in (INIT_SCRIPT, Path(__file__), Path(kmod.__file__)):
        digest.update(path.read_bytes())
    for pkg in _package_dirs():
        digest.update(str(pkg).encode())
    return digest.hexdigest()[:16]


def build(kernel: Kernel, cache: Path) -> Path:
    """The initramfs for `kernel` (zstd-compressed newc cpio), built once and cached by its inputs."""
    target = cache / "initramfs" / f"{cache_key(kernel)}.cpio.zst"
    if target.exists():
        os.utime(target)  # most recently used: kept by _prune
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / "root"
        dirs = ("bin", "sbin", "proc", "sys", "dev", "tmp", "run", "project", "out", "etc", "lib/modules", "opt/pylib")
        for d in dirs:
            (staging / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, staging / "bin" / "busybox")
        shutil.copy2(INIT_SCRIPT, staging / "init")
        (staging / "init").chmod(0o755)

        load = []
        if kernel.modules_dir is not None:
            for name, image in kmod.plan(kernel.modules_dir, list(kernel.modules)).modules:
                (staging / "lib" / "modules" / f"{name}.ko").write_bytes(image)
                load.append(name)
        (staging / "etc" / "modules.load").write_text("".join(f"{m}\n" for m in load))

        executable, stdlib = _python_parts()
        _copy(executable, staging)
        (staging / "usr" / "bin").mkdir(parents=True, exist_ok=True)
        if not (staging / "usr" / "bin" / "python3").exists():
            (staging / "usr" / "bin" / "python3").symlink_to(executable)
        dynload = list((stdlib / "lib-dynload").glob("*.so"))
        for lib in _shared_libraries([executable, *dynload]):
            _copy(lib, staging)
        shutil.copytree(
            stdlib,
            staging / stdlib.relative_to("/"),
            symlinks=True,
            ignore=lambda d, names: [
                n for n in names if (Path(d) == stdlib and (n in STDLIB_EXCLUDES or n.startswith("config-")))
                or n in {"site-packages", "dist-packages"}
            ],
        )
        for pkg in _package_dirs():
            shutil.copytree(pkg, staging / "opt" / "pylib" / pkg.name, ignore=shutil.ignore_patterns("tests"))

        archive = Path(tmp) / "initramfs.cpio.zst"
        names = subprocess.run(
            ["find", "."], cwd=staging, check=True, capture_output=True, text=True
        ).stdout
        cpio = subprocess.run(
            [str(BUSYBOX), "cpio", "-o", "-H", "newc"],
            cwd=staging, input=names.encode(), check=True, capture_output=True,
        ).stdout
        archive.write_bytes(subprocess.run(["zstd", "-q", "-T0", "-9"], input=cpio, check=True,
                                           capture_output=True).stdout)
        os.replace(archive, target)
    _prune(target.parent)
    return target


def _prune(directory: Path, keep: int = 4) -> None:
    """Every change to the guest's inputs makes a new image: keep the few most recently used."""
    images = sorted(directory.glob("*.cpio.zst"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in images[keep:]:
        old.unlink(missing_ok=True)
