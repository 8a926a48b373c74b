"""Kernel modules for the guest, read straight from Debian's kernel package (which ships no modules.dep).

The dependency list of a module is the `depends=` entry of its ELF `.modinfo` section; modules are shipped
xz-compressed and busybox's insmod wants them plain, so they are decompressed here, in load order.
"""

from __future__ import annotations

import lzma
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

_SUFFIXES = (".ko", ".ko.xz", ".ko.zst")


class ModuleError(Exception):
    """A module the guest needs is neither built in nor shipped."""


def module_name(path: Path) -> str:
    name = path.name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.replace("-", "_")


def read_module(path: Path) -> bytes:
    if path.name.endswith(".xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    return path.read_bytes()


def modinfo(image: bytes) -> dict[str, str]:
    """The key=value strings of the `.modinfo` section of a 64-bit little-endian ELF module."""
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise ModuleError("not a 64-bit little-endian ELF module")
    shoff, = struct.unpack_from("<Q", image, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        base = shoff + index * shentsize
        name, = struct.unpack_from("<I", image, base)
        offset, size = struct.unpack_from("<QQ", image, base + 0x18)
        return name, offset, size

    _, names_off, _ = section(shstrndx)
    for index in range(shnum):
        name_off, offset, size = section(index)
        end = image.index(b"\0", names_off + name_off)
        if image[names_off + name_off : end] == b".modinfo":
            info: dict[str, str] = {}
            for entry in image[offset : offset + size].split(b"\0"):
                key, sep, value = entry.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, value)
            return info
    return {}


@dataclass(frozen=True)
class LoadPlan:
    """Modules to insmod, dependencies first, as (name, decompressed image)."""

    modules: tuple[tuple[str, bytes], ...]


def plan(modules_dir: Path, wanted: list[str]) -> LoadPlan:
    """Resolve `wanted` (and what they depend on) against an unpacked `/lib/modules/<release>` tree."""
    builtin = set()
    builtin_list = modules_dir / "modules.builtin"
    if builtin_list.exists():
        builtin = {module_name(Path(line)) for line in builtin_list.read_text().split()}
    files = {module_name(p): p for p in (modules_dir / "kernel").rglob("*.ko*")}
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        if name in chain:
            raise ModuleError(f"module dependency cycle: {' -> '.join((*chain, name))}")
        path = files.get(name)
        if path is None:
            raise ModuleError(f"kernel module {name!r} is neither built in nor in {modules_dir}")
        image = read_module(path)
        for dep in filter(None, modinfo(image).get("depends", "").split(",")):
            visit(dep, (*chain, name))
        seen.add(name)
        ordered.append((name, image))

    for name in wanted:
        visit(name, ())
    return LoadPlan(modules=tuple(ordered))
