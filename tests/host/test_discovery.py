"""Discovery from sysfs: every topology, the PCI-ID table, the device filter, NVML enrichment, no IOMMU."""

from __future__ import annotations

from pathlib import Path

import pytest

from cc_gpu.host import pciids
from cc_gpu.host.discovery import DeviceFilter, discover
from cc_gpu.host.errors import NoIommuError
from cc_gpu.host.host import Host
from cc_gpu.host.sim import TOPOLOGIES, create_sim_host, sim_kernel
from cc_gpu.host.tee import read_host_tee
from tests.host.conftest import SimFactory

# name: (gpu count, {group: gpus in it}, product, architecture)
EXPECTED = {
    "dgx-h100": (8, {10: 1, 11: 1, 12: 1, 13: 1, 14: 1, 15: 1, 16: 1, 17: 1}, "H100 SXM5 80GB", "hopper"),
    "dgx-h100-legacy": (8, {10: 1, 11: 1, 12: 1, 13: 1, 14: 1, 15: 1, 16: 1, 17: 1}, "H100 SXM5 80GB", "hopper"),
    "h100-pcie-audio": (1, {30: 1}, "H100 PCIe", "hopper"),
    "shared-group-nic": (1, {31: 1}, "H100 PCIe", "hopper"),
    "two-gpus-one-group": (2, {32: 2}, "H100 PCIe", "hopper"),
    "blackwell-iommufd": (4, {50: 1, 51: 1, 52: 1, 53: 1}, "B200", "blackwell"),
    "gh200": (1, {60: 1}, "GH200 480GB", "hopper"),
}


@pytest.mark.parametrize("topology", sorted(EXPECTED))
def test_each_topology_lists_its_gpus_and_groups(sim: SimFactory, topology: str) -> None:
    count, groups, product, arch = EXPECTED[topology]
    host, _ = sim(topology)
    inv = discover(host)
    assert len(inv.gpus) == count
    assert {g.number: len(g.gpus) for g in inv.groups} == groups
    assert {g.product_name for g in inv.gpus} == {product}
    assert {g.architecture for g in inv.gpus} == {arch}
    for gpu in inv.gpus:
        assert gpu.iommu_group in groups
        assert gpu.bdf in [m.bdf for m in gpu.group_members]
        assert gpu.driver == "nvidia"
        assert gpu.cc_mode == "on"
        assert gpu.pcie_root.startswith("pci")
    assert inv.iommufd is (topology != "dgx-h100-legacy"), "current kernels offer iommufd; the legacy node does not"


def test_every_named_topology_is_tested_here() -> None:
    assert set(TOPOLOGIES) == set(EXPECTED) | {"no-iommu", "emulated-edu"}


def test_emulated_devices_through_an_injected_filter(sim: SimFactory) -> None:
    host, _ = sim("emulated-edu")
    assert discover(host).gpus == ()
    inv = discover(host, DeviceFilter.parse(["1234"], ["00ff"]))
    assert [(g.bdf, g.iommu_group, g.driver, g.cc_mode) for g in inv.gpus] == [
        ("0000:00:03.0", 3, None, "unknown"), ("0000:00:04.0", 4, None, "unknown")]


def test_no_iommu_is_a_typed_error(sim: SimFactory) -> None:
    host, _ = sim("no-iommu")
    with pytest.raises(NoIommuError, match="IOMMU is off"):
        discover(host)
    assert len(discover(host, require_iommu=False).gpus) == 2


def test_companion_and_foreign_members_are_reported(sim: SimFactory) -> None:
    host, _ = sim("shared-group-nic")
    (gpu,) = discover(host).gpus
    members = {m.bdf: m for m in gpu.group_members}
    assert members["0000:83:00.0"].driver == "mlx5_core"
    assert members["0000:81:00.0"].is_bridge and members["0000:81:00.0"].driver == "pcieport"
    assert not members["0000:82:00.0"].is_bridge


def test_two_gpus_in_one_group_are_one_unit(sim: SimFactory) -> None:
    host, _ = sim("two-gpus-one-group")
    inv = discover(host)
    (unit,) = inv.units
    assert unit.gpus == ("0000:c2:00.0", "0000:c3:00.0")
    assert unit.name == "0000:c2:00.0"
    assert inv.gpu("0000:c2:00.0").shares_group_with == ("0000:c3:00.0",)  # type: ignore[union-attr]


def test_vga_and_3d_classes(sim: SimFactory) -> None:
    host, _ = sim("h100-pcie-audio")
    assert discover(host).gpus[0].is_vga
    host2, _ = sim("dgx-h100")
    assert not any(g.is_vga for g in discover(host2).gpus)


def test_iommufd_cdev_and_node_flag(sim: SimFactory) -> None:
    host, _ = sim("blackwell-iommufd")
    inv = discover(host)
    assert inv.iommufd
    assert all(g.iommufd_cdev is None for g in inv.gpus)  # only vfio-bound devices have cdevs


def test_sriov_virtual_functions_are_excluded(sim: SimFactory) -> None:
    host, kernel = sim("h100-pcie-audio")
    # A VF of the GPU: a function with a physfn link.
    vf = kernel.sys / "devices" / "pci0000:40" / "0000:40:01.0" / "0000:41:00.4"
    vf.mkdir()
    for name, value in (("vendor", "0x10de"), ("device", "0x2331"), ("class", "0x030200")):
        (vf / name).write_text(value + "\n")
    (vf / "physfn").symlink_to("../0000:41:00.0")
    (kernel.sys / "bus" / "pci" / "devices" / "0000:41:00.4").symlink_to(vf)
    assert [g.bdf for g in discover(host).gpus] == ["0000:41:00.0"]


def test_nvml_enrichment_and_its_absence(sim: SimFactory) -> None:
    host, kernel = sim("dgx-h100")
    kernel.set_cc_mode("0000:18:00.0", "off")  # NVML answers for a GPU that still serves the host
    gpu = discover(host).gpus[0]
    assert gpu.uuid is not None and gpu.uuid.startswith("GPU-")
    assert gpu.memory_bytes == 80 << 30
    assert gpu.driver_version
    kernel.set_nvml(False)
    gpu = discover(host).gpus[0]
    assert (gpu.uuid, gpu.memory_bytes, gpu.vbios_version, gpu.driver_version) == (None, None, None, None)
    assert gpu.cc_mode == "off"  # from BAR0 now


def test_device_filter_selects_other_devices(sim: SimFactory) -> None:
    host, _ = sim("dgx-h100")
    nics = discover(host, DeviceFilter.parse(["15b3"], ["0200"]))
    assert [g.bdf for g in nics.gpus] == ["0000:c1:00.0"]
    assert nics.gpus[0].product_name == "PCI device 15b3:1021"
    assert nics.gpus[0].cc_mode == "unknown"


def test_vanished_device_drops_out(sim: SimFactory) -> None:
    host, kernel = sim("dgx-h100")
    kernel.remove_device("0000:18:00.0")
    assert "0000:18:00.0" not in [g.bdf for g in discover(host).gpus]
    assert len(discover(host).gpus) == 7


@pytest.mark.parametrize(
    ("device_id", "name", "arch"),
    [
        pytest.param(0x2330, "H100 SXM5 80GB", "hopper", id="h100-sxm"),
        pytest.param(0x2331, "H100 PCIe", "hopper", id="h100-pcie"),
        pytest.param(0x2321, "H100 NVL", "hopper", id="h100-nvl"),
        pytest.param(0x2335, "H200 SXM 141GB", "hopper", id="h200"),
        pytest.param(0x2324, "H800 SXM5", "hopper", id="h800"),
        pytest.param(0x2329, "H20", "hopper", id="h20"),
        pytest.param(0x2342, "GH200 480GB", "hopper", id="gh200"),
        pytest.param(0x2901, "B200", "blackwell", id="b200"),
        pytest.param(0x2941, "GB200", "blackwell", id="gb200"),
        pytest.param(0x2BB5, "RTX PRO 6000 Blackwell Server Edition", "blackwell", id="rtx-pro-6000"),
        pytest.param(0x1234, "NVIDIA device 1234", "unknown", id="unknown-id"),
    ],
)
def test_pci_id_table(device_id: int, name: str, arch: str) -> None:
    assert pciids.lookup(pciids.NVIDIA, device_id) == pciids.Product(name, arch)


def test_host_tee_readout(sim: SimFactory) -> None:
    host, kernel = sim("dgx-h100")
    assert read_host_tee(host.io, host.roots).kinds == ("sev-snp",)
    kernel.set_tee(sev_snp=False, tdx=True)
    assert read_host_tee(host.io, host.roots).kinds == ("tdx",)
    kernel.set_tee(sev_snp=False, tdx=False)
    assert not read_host_tee(host.io, host.roots).any


def test_sim_host_is_reused_with_its_state(tmp_path: Path) -> None:
    host = create_sim_host("dgx-h100", tmp_path)
    sim_kernel(host).remove_device("0000:18:00.0")
    again = create_sim_host("dgx-h100", tmp_path)
    assert len(discover(again).gpus) == 7


def test_real_host_discovery_does_not_crash() -> None:
    host = Host.real("/", use_nvml=False)
    try:
        inv = discover(host)
    except NoIommuError:
        return
    assert all(g.vendor_id == pciids.NVIDIA for g in inv.gpus)


def test_iommu_without_vfio_cdevs_is_no_iommufd(sim: SimFactory) -> None:
    """CONFIG_IOMMUFD without CONFIG_VFIO_DEVICE_CDEV: /dev/iommu exists, but vfio registers no vfio-dev major."""
    host, kernel = sim("dgx-h100")
    assert discover(host).iommufd
    (kernel.sys / "module" / "vfio").mkdir(parents=True, exist_ok=True)
    (kernel.proc / "devices").write_text("Character devices:\n 10 misc\n240 vfio\n")
    assert not discover(host).iommufd
    (kernel.proc / "devices").write_text("Character devices:\n 10 misc\n239 vfio-dev\n240 vfio\n")
    assert discover(host).iommufd
