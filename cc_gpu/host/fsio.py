"""The one file-I/O adapter of the host layer, and its real implementation.

Discovery, the binder, the in-use check and the CC-mode readout read and write the host only through `HostIO`. The
real implementation is plain `os` calls on the paths it is given (which already carry the injected roots); the
simulated kernel (`cc_gpu.host.sim`) implements the same protocol and applies the kernel's reaction to each write.
So there is no "if simulated" anywhere in the logic, and the QEMU guest tests run exactly the code a node runs.

Writes surface the kernel's errno as `OSError`, as a write(2) to sysfs does; callers turn them into typed errors.
"""

from __future__ import annotations

import mmap
import os
import struct
import subprocess
from pathlib import Path
from typing import Protocol


class HostIO(Protocol):
    """Reads and writes of sysfs, /dev and /proc, with the kernel's errors as `OSError`."""

    def read_text(self, path: Path) -> str: ...

    def write_text(self, path: Path, data: str) -> None:
        """One write(2) of `data`; the kernel's errno surfaces as OSError."""
        ...

    def readlink(self, path: Path) -> str: ...

    def listdir(self, path: Path) -> list[str]: ...

    def exists(self, path: Path) -> bool: ...

    def realpath(self, path: Path) -> Path: ...

    def read_mmio32(self, path: Path, offset: int) -> int:
        """Read one little-endian 32-bit register through a read-only mmap of a BAR resource file."""
        ...

    def load_module(self, name: str) -> None:
        """Load a kernel module (modprobe); raises OSError when it cannot be loaded."""
        ...


class RealHostIO:
    """`HostIO` on the real filesystem: the node itself, a container's host mount, or a QEMU guest."""

    def __init__(self, modprobe: str = "modprobe") -> None:
        self._modprobe = modprobe

    def read_text(self, path: Path) -> str:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def write_text(self, path: Path, data: str) -> None:
        # sysfs attributes must be written in a single write(2) with no O_CREAT / O_TRUNC surprises.
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)

    def readlink(self, path: Path) -> str:
        return os.readlink(path)

    def listdir(self, path: Path) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: Path) -> bool:
        return os.path.lexists(path)

    def realpath(self, path: Path) -> Path:
        return Path(os.path.realpath(path))

    def read_mmio32(self, path: Path, offset: int) -> int:
        return read_mmio32(path, offset)

    def load_module(self, name: str) -> None:
        proc = subprocess.run([self._modprobe, name], capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode != 0:
            raise OSError(f"{self._modprobe} {name} failed: {proc.stderr.strip()}")


def read_mmio32(path: Path, offset: int) -> int:
    """Map the page holding `offset` read-only and read 4 bytes; shared by the real adapter and the simulated one.

    Read-only mapping (PROT_READ on an O_RDONLY descriptor) means a bug here can never write a GPU register.
    """
    page = mmap.ALLOCATIONGRANULARITY
    base = offset - offset % page
    fd = os.open(path, os.O_RDONLY)
    try:
        with mmap.mmap(fd, page, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=base) as m:
            value: int = struct.unpack_from("<I", m, offset - base)[0]
            return value
    finally:
        os.close(fd)
