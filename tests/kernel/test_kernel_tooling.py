"""Fast checks of the real-kernel tooling itself (no guest): ioctl numbers, module metadata, the result report."""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path

import pytest

from . import kmod, tiers, vm

GUEST = Path(__file__).resolve().parent / "guest"


def _guest_module(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(f"cc_gpu_guest_{name}", GUEST / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


vfio_uapi = _guest_module("vfio_uapi")


# _IO(';', nr) = (0x3b << 8) | nr, with VFIO_BASE 100 and IOMMUFD_CMD_BASE 0x80 (include/uapi/linux/{vfio,iommufd}.h).
@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("VFIO_GET_API_VERSION", 0x3B64),
        ("VFIO_CHECK_EXTENSION", 0x3B65),
        ("VFIO_SET_IOMMU", 0x3B66),
        ("VFIO_GROUP_GET_STATUS", 0x3B67),
        ("VFIO_GROUP_SET_CONTAINER", 0x3B68),
        ("VFIO_GROUP_GET_DEVICE_FD", 0x3B6A),
        ("VFIO_DEVICE_GET_INFO", 0x3B6B),
        ("VFIO_DEVICE_BIND_IOMMUFD", 0x3B76),
        ("VFIO_DEVICE_ATTACH_IOMMUFD_PT", 0x3B77),
        ("IOMMU_IOAS_ALLOC", 0x3B81),
    ],
)
def test_ioctl_numbers(name: str, number: int) -> None:
    assert getattr(vfio_uapi, name) == number


def _elf_with_modinfo(entries: bytes) -> bytes:
    """A minimal 64-bit little-endian ELF: a null section, .modinfo, and the section-name table."""
    names = b"\0.modinfo\0.shstrtab\0"
    header_size, shentsize = 0x40, 0x40
    modinfo_off = header_size
    names_off = modinfo_off + len(entries)
    shoff = names_off + len(names)
    elf = bytearray(b"\x7fELF" + bytes([2, 1, 1]) + bytes(9))
    elf += bytes(header_size - len(elf))
    struct.pack_into("<Q", elf, 0x28, shoff)
    struct.pack_into("<HHH", elf, 0x3A, shentsize, 3, 2)
    elf += entries + names

    def section(name_off: int, offset: int, size: int) -> bytes:
        sh = bytearray(shentsize)
        struct.pack_into("<I", sh, 0, name_off)
        struct.pack_into("<QQ", sh, 0x18, offset, size)
        return bytes(sh)

    elf += section(0, 0, 0) + section(1, modinfo_off, len(entries)) + section(10, names_off, len(names))
    return bytes(elf)


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        pytest.param(b"license=GPL\0depends=vfio,irqbypass\0name=vfio_pci_core\0",
                     {"license": "GPL", "depends": "vfio,irqbypass", "name": "vfio_pci_core"}, id="with-depends"),
        pytest.param(b"depends=\0name=irqbypass\0", {"depends": "", "name": "irqbypass"}, id="no-depends"),
    ],
)
def test_modinfo(entries: bytes, expected: dict[str, str]) -> None:
    assert kmod.modinfo(_elf_with_modinfo(entries)) == expected


def test_modinfo_rejects_non_elf() -> None:
    with pytest.raises(kmod.ModuleError):
        kmod.modinfo(b"not an elf")


def test_plan_orders_dependencies_first(tmp_path: Path) -> None:
    kernel = tmp_path / "kernel"
    kernel.mkdir()
    (kernel / "a.ko").write_bytes(_elf_with_modinfo(b"depends=b,c\0"))
    (kernel / "b.ko").write_bytes(_elf_with_modinfo(b"depends=c\0"))
    (kernel / "c.ko").write_bytes(_elf_with_modinfo(b"depends=builtin_one\0"))
    (tmp_path / "modules.builtin").write_text("kernel/x/builtin-one.ko\n")
    assert [name for name, _ in kmod.plan(tmp_path, ["a"]).modules] == ["c", "b", "a"]


def test_plan_names_a_missing_module(tmp_path: Path) -> None:
    (tmp_path / "kernel").mkdir()
    with pytest.raises(kmod.ModuleError, match="nowhere"):
        kmod.plan(tmp_path, ["nowhere"])


def _tier_run(cases: dict[str, tiers.CaseResult], finished: bool = True) -> tiers.TierRun:
    run = vm.GuestRun(exit_code=1, timed_out=False, seconds=12.0, console="[ 1.0] console line", guest_log="guest says",
                      dmesg="[ 2.0] kernel says", results="{}", qemu_command=("qemu",))
    return tiers.TierRun("legacy", "6.12", run, cases, finished, None)


def test_report_of_a_failed_case_carries_the_kernels_words() -> None:
    failed = tiers.CaseResult("bind_solo_group", False, 1.0, "VFIO_GROUP_SET_CONTAINER refused", "EPERM",
                              "[ 9.9] vfio-pci 0000:01:00.0: something the kernel said")
    report = _tier_run({"bind_solo_group": failed}).report("bind_solo_group")
    for words in ("VFIO_GROUP_SET_CONTAINER refused", "errno: EPERM", "something the kernel said"):
        assert words in report


def test_report_of_a_case_that_never_ran_shows_console_and_kernel_log() -> None:
    report = _tier_run({}, finished=False).report("bind_solo_group")
    for words in ("harness finished: False", "guest says", "console line", "kernel says"):
        assert words in report
