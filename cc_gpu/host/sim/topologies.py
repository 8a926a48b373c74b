"""Ready-made simulated nodes, selectable by name, and the builder that writes one onto disk.

Each topology is data (`SimTopology`): PCI functions with their IDs, class, driver, IOMMU group and place in the PCIe
tree, plus node facts (IOMMU on, iommufd, TEE, NVML). `build` lays it out the way Linux does: canonical device
directories under `sys/devices/pci<domain>:<bus>/...`, relative symlinks from `sys/bus/pci/devices`, driver and
IOMMU-group links, `/proc/driver/nvidia/gpus/<bdf>/information`, a sparse `resource0` with the CC register set, a
`modules.alias`. vfio-pci starts unloaded, so the binder's module loading runs too.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cc_gpu.host.pciids import lookup
from cc_gpu.host.sim.kernel import BAR0_SIZE, SimKernel, rel_symlink

KERNEL_RELEASE = "6.8.0-sim"
NVIDIA_DRIVER_VERSION = "570.124.06"

# Drivers the sim knows: directory name -> ID table (vendor, class prefix). vfio drivers match by override only.
DRIVER_TABLES: dict[str, list[dict[str, str]]] = {
    "nvidia": [{"vendor": "10de", "class": "03"}, {"vendor": "10de", "class": "0680"}],
    "snd_hda_intel": [{"class": "0403"}],
    "mlx5_core": [{"vendor": "15b3", "class": "02"}],
    "pcieport": [{"class": "0604"}],
    "nvgrace_gpu_vfio_pci": [],
    "vfio-pci": [],
    "pci-stub": [],
}
LOADED_AT_BOOT = ("nvidia", "snd_hda_intel", "mlx5_core", "pcieport", "pci-stub")
MODULES = {name.replace("-", "_"): name for name in DRIVER_TABLES}

MODULES_ALIAS = """\
alias pci:v000010DEd*sv*sd*bc03sc*i* nvidia
alias vfio_pci:v000010DEd00002342sv*sd*bc03sc02i00* nvgrace_gpu_vfio_pci
alias vfio_pci:v000010DEd00002348sv*sd*bc03sc02i00* nvgrace_gpu_vfio_pci
alias pci:v000015B3d*sv*sd*bc02sc*i* mlx5_core
"""


@dataclass(frozen=True)
class SimDevice:
    bdf: str
    vendor: int
    device: int
    klass: int  # 24-bit class code
    driver: str | None
    group: int
    parent: str | None = None  # BDF of the upstream bridge; None: directly on the root complex
    numa: int = 0
    subsystem: tuple[int, int] = (0x10DE, 0x16C1)
    sriov_totalvfs: int = 0
    reset_method: str = "flr bus"
    cc_mode: str = "on"


@dataclass(frozen=True)
class SimTopology:
    name: str
    description: str
    devices: tuple[SimDevice, ...]
    iommu: bool = True
    iommufd: bool = True  # /dev/iommu and VFIO device cdevs, as current distribution kernels have
    sev_snp: bool = True
    tdx: bool = False
    nvml: bool = True
    extra: dict[str, str] = field(default_factory=dict)


def _port(bdf: str, group: int, parent: str | None = None, numa: int = 0) -> SimDevice:
    return SimDevice(bdf, 0x8086, 0x352A, 0x060400, "pcieport", group, parent, numa, (0x8086, 0x0000), 0, "")


def _gpu(bdf: str, device: int, group: int, parent: str, numa: int = 0, *, klass: int = 0x030200) -> SimDevice:
    return SimDevice(bdf, 0x10DE, device, klass, "nvidia", group, parent, numa)


def _dgx_h100(*, iommufd: bool = True) -> SimTopology:
    """A DGX H100 on a current distribution kernel: iommufd and VFIO device cdevs (`/dev/iommu`) as well as legacy
    groups. `iommufd=False` is the same machine on a kernel without them, where confidential claims are refused."""
    gpu_buses = ["18", "2a", "3a", "5d", "9a", "ab", "ba", "db"]
    devs: list[SimDevice] = []
    for i, bus in enumerate(gpu_buses):
        root = f"0000:{int(bus, 16) - 2:02x}:01.0"
        numa = 0 if i < 4 else 1
        devs.append(_port(root, 100 + i, numa=numa))
        devs.append(_gpu(f"0000:{bus}:00.0", 0x2330, 10 + i, root, numa))
    for i in range(4):
        devs.append(SimDevice(f"0000:0{5 + i}:00.0", 0x10DE, 0x22A3, 0x068000, "nvidia", 20 + i, None, 0,
                              (0x10DE, 0x1796), 0, "flr", "off"))
    devs.append(SimDevice("0000:c1:00.0", 0x15B3, 0x1021, 0x020000, "mlx5_core", 40, None, 1, (0x15B3, 0x0023), 16))
    if not iommufd:
        return SimTopology("dgx-h100-legacy", "dgx-h100 on a kernel without iommufd: legacy VFIO groups only "
                           "(confidential claims are refused)", tuple(devs), iommufd=False)
    return SimTopology("dgx-h100", "8 x H100 SXM5, one GPU per IOMMU group, 4 NVSwitches, a ConnectX-7 NIC, "
                       "iommufd cdevs and legacy groups", tuple(devs), iommufd=True)


def _dgx_h100_legacy() -> SimTopology:
    return _dgx_h100(iommufd=False)


def _h100_pcie_audio() -> SimTopology:
    return SimTopology("h100-pcie-audio", "one H100 PCIe whose HD-audio function shares its IOMMU group", (
        _port("0000:40:01.0", 101),
        _gpu("0000:41:00.0", 0x2331, 30, "0000:40:01.0", klass=0x030000),
        SimDevice("0000:41:00.1", 0x10DE, 0x22E8, 0x040300, "snd_hda_intel", 30, "0000:40:01.0", 0,
                  (0x10DE, 0x16C1), 0, "flr", "off"),
    ))


def _shared_group_nic() -> SimTopology:
    return SimTopology("shared-group-nic", "an H100 PCIe sharing its IOMMU group with a ConnectX-7 NIC", (
        _port("0000:80:01.0", 102),
        _port("0000:81:00.0", 31, "0000:80:01.0"),
        _gpu("0000:82:00.0", 0x2331, 31, "0000:81:00.0"),
        SimDevice("0000:83:00.0", 0x15B3, 0x1021, 0x020000, "mlx5_core", 31, "0000:81:00.0", 0, (0x15B3, 0x0023), 16),
    ))


def _two_gpus_one_group() -> SimTopology:
    return SimTopology("two-gpus-one-group", "two H100 PCIe behind one PCIe switch without ACS: one IOMMU group", (
        _port("0000:c0:01.0", 103, numa=1),
        _port("0000:c1:00.0", 32, "0000:c0:01.0", 1),
        _gpu("0000:c2:00.0", 0x2331, 32, "0000:c1:00.0", 1),
        _gpu("0000:c3:00.0", 0x2331, 32, "0000:c1:00.0", 1),
    ))


def _blackwell_iommufd() -> SimTopology:
    devs: list[SimDevice] = []
    for i, bus in enumerate(["1b", "43", "9c", "c4"]):
        root = f"0000:{int(bus, 16) - 1:02x}:01.0"
        devs.append(_port(root, 110 + i, numa=i // 2))
        devs.append(_gpu(f"0000:{bus}:00.0", 0x2901, 50 + i, root, i // 2))
    return SimTopology("blackwell-iommufd", "4 x B200, one GPU per group, iommufd cdevs (/dev/iommu)", tuple(devs),
                       iommufd=True, sev_snp=False, tdx=True)


def _gh200() -> SimTopology:
    return SimTopology("gh200", "one GH200 whose vfio driver is the nvgrace-gpu variant from modules.alias", (
        _gpu("0009:01:00.0", 0x2342, 60, "0009:00:00.0"),
        _port("0009:00:00.0", 61),
    ))


def _no_iommu() -> SimTopology:
    return SimTopology("no-iommu", "two H100 PCIe on a node booted without an IOMMU", (
        _port("0000:40:01.0", 0),
        _gpu("0000:41:00.0", 0x2331, 0, "0000:40:01.0"),
        _port("0000:50:01.0", 0),
        _gpu("0000:51:00.0", 0x2331, 0, "0000:50:01.0"),
    ), iommu=False, iommufd=False)


def _emulated_edu() -> SimTopology:
    """What a QEMU guest with two `edu` devices shows; the real-kernel tests point the same code at those."""
    return SimTopology("emulated-edu", "two QEMU edu devices (1234:11e8, class 00ff), no driver, one group each", (
        SimDevice("0000:00:03.0", 0x1234, 0x11E8, 0x00FF00, None, 3, None, 0, (0x1AF4, 0x1100), 0, "flr", "off"),
        SimDevice("0000:00:04.0", 0x1234, 0x11E8, 0x00FF00, None, 4, None, 0, (0x1AF4, 0x1100), 0, "flr", "off"),
    ), iommufd=False, sev_snp=False, nvml=False)


TOPOLOGY_BUILDERS: dict[str, Callable[[], SimTopology]] = {
    "dgx-h100": _dgx_h100,
    "dgx-h100-legacy": _dgx_h100_legacy,
    "h100-pcie-audio": _h100_pcie_audio,
    "shared-group-nic": _shared_group_nic,
    "two-gpus-one-group": _two_gpus_one_group,
    "blackwell-iommufd": _blackwell_iommufd,
    "gh200": _gh200,
    "no-iommu": _no_iommu,
    "emulated-edu": _emulated_edu,
}


def _modalias(d: SimDevice) -> str:
    base, sub, prog = d.klass >> 16, (d.klass >> 8) & 0xFF, d.klass & 0xFF
    return (f"pci:v{d.vendor:08X}d{d.device:08X}sv{d.subsystem[0]:08X}sd{d.subsystem[1]:08X}"
            f"bc{base:02X}sc{sub:02X}i{prog:02X}")


def _canonical_dirs(topo: SimTopology, sys: Path) -> dict[str, Path]:
    by_bdf = {d.bdf: d for d in topo.devices}
    paths: dict[str, Path] = {}

    def path(bdf: str) -> Path:
        if bdf not in paths:
            d = by_bdf[bdf]
            if d.parent is None or d.parent not in by_bdf:
                domain, bus = bdf.split(":")[:2]
                host_bridge = d.parent.split(":")[1] if d.parent else bus
                paths[bdf] = sys / "devices" / f"pci{domain}:{host_bridge}" / bdf
            else:
                paths[bdf] = path(d.parent) / bdf
        return paths[bdf]

    for d in topo.devices:
        path(d.bdf)
    return paths


def build(topo: SimTopology, root: Path) -> SimKernel:
    """Write the topology's tree under `root` and initialise the kernel state."""
    k = SimKernel(root)
    sys = k.sys
    for drv in LOADED_AT_BOOT:
        drv_root = sys / "bus" / "pci" / "drivers" / drv
        drv_root.mkdir(parents=True, exist_ok=True)
        for ctl in ("bind", "unbind", "new_id"):
            (drv_root / ctl).touch()
        (sys / "module" / drv.replace("-", "_")).mkdir(parents=True, exist_ok=True)
    (sys / "bus" / "pci" / "drivers_probe").parent.mkdir(parents=True, exist_ok=True)
    (sys / "bus" / "pci" / "drivers_probe").touch()
    (sys / "kernel").mkdir(parents=True, exist_ok=True)
    (k.dev / "vfio").mkdir(parents=True, exist_ok=True)
    (k.dev / "vfio" / "vfio").touch()
    (k.dev / "nvidiactl").touch()
    if topo.iommufd:
        (k.dev / "iommu").touch()
    (k.proc / "sys" / "kernel").mkdir(parents=True, exist_ok=True)
    (k.proc / "sys" / "kernel" / "osrelease").write_text(KERNEL_RELEASE + "\n")
    (k.proc / "sys" / "kernel" / "random").mkdir(exist_ok=True)
    (k.proc / "sys" / "kernel" / "random" / "boot_id").write_text(f"{uuid.uuid4()}\n")  # one per simulated boot
    mods = root / "lib" / "modules" / KERNEL_RELEASE
    mods.mkdir(parents=True, exist_ok=True)
    (mods / "modules.alias").write_text(MODULES_ALIAS)

    dirs = _canonical_dirs(topo, sys)
    minors: dict[str, int] = {}
    arch: dict[str, str] = {}
    nvml: dict[str, dict[str, object]] = {}
    for d in topo.devices:
        dev = dirs[d.bdf]
        dev.mkdir(parents=True, exist_ok=True)
        attrs = {
            "vendor": f"0x{d.vendor:04x}", "device": f"0x{d.device:04x}", "class": f"0x{d.klass:06x}",
            "subsystem_vendor": f"0x{d.subsystem[0]:04x}", "subsystem_device": f"0x{d.subsystem[1]:04x}",
            "numa_node": str(d.numa), "modalias": _modalias(d), "driver_override": "(null)",
            "reset_method": d.reset_method, "uevent": "", "reset": "", "remove": "",
        }
        if d.sriov_totalvfs:
            attrs |= {"sriov_totalvfs": str(d.sriov_totalvfs), "sriov_numvfs": "0"}
        for name, value in attrs.items():
            (dev / name).write_text(value + "\n" if value else "")
        rel_symlink(dev, sys / "bus" / "pci" / "devices" / d.bdf)
        if topo.iommu:
            gdir = sys / "kernel" / "iommu_groups" / str(d.group)
            rel_symlink(dev, gdir / "devices" / d.bdf)
            rel_symlink(gdir, dev / "iommu_group")
        if d.driver:
            drv_dir = sys / "bus" / "pci" / "drivers" / d.driver
            rel_symlink(drv_dir, dev / "driver")
            rel_symlink(dev, drv_dir / d.bdf)
        product = lookup(d.vendor, d.device)
        if d.vendor == 0x10DE and d.klass >> 16 == 0x03:
            minor = len(minors)
            minors[d.bdf] = minor
            arch[d.bdf] = product.architecture
            with open(dev / "resource0", "wb") as bar:
                bar.truncate(BAR0_SIZE)  # sparse: reads as zeroes (CC off) until set_cc_mode writes the register
            (k.dev / f"nvidia{minor}").touch()
            info = k.proc / "driver" / "nvidia" / "gpus" / d.bdf / "information"
            info.parent.mkdir(parents=True, exist_ok=True)
            info.write_text(f"Model: \t\t NVIDIA {product.name}\nIRQ:   \t\t 0\nDevice Minor: \t {minor}\n"
                            f"Bus Location: \t {d.bdf}\n")
            digest = hashlib.sha256(f"{topo.name}/{d.bdf}".encode()).hexdigest()
            nvml[d.bdf] = {"uuid": f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}",
                           "memory": (80 if product.architecture == "hopper" else 180) << 30,
                           "vbios": "96.00.99.00.01"}
    with k.locked() as state:
        state.update({
            "topology": topo.name,
            "drivers": {name: {"match": rules} for name, rules in DRIVER_TABLES.items()},
            "modules": MODULES,
            "iommufd": topo.iommufd,
            "nvidia_minor": minors,
            "architecture": arch,
            "nvml": nvml,
            "nvml_present": topo.nvml,
            "driver_version": NVIDIA_DRIVER_VERSION,
        })
    k.set_tee(topo.sev_snp, topo.tdx)
    for d in topo.devices:
        if d.bdf in arch and arch[d.bdf] in ("hopper", "blackwell"):
            k.set_cc_mode(d.bdf, d.cc_mode)
    (k.meta / "topology.json").write_text(json.dumps({"name": topo.name, "description": topo.description}))
    return k
