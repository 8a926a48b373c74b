"""The binder on the simulated kernel: whole groups, policy, exact restore, rollback, bounded waits, idempotence."""

from __future__ import annotations

import errno
import threading

import pytest

from cc_gpu.errors import TemporaryError
from cc_gpu.host.binder import BindPolicy
from cc_gpu.host.discovery import DeviceFilter
from cc_gpu.host.errors import (
    BindFailedError,
    BindTimeoutError,
    DeviceVanishedError,
    ForeignDeviceError,
    GpuInUseError,
    GroupInUseError,
    GroupNotFoundError,
    GroupNotViableError,
    GroupOwnedError,
    NoIommuError,
    RecordCorruptError,
    ResetUnsupportedError,
    RestoreFailedError,
    SriovActiveError,
)
from cc_gpu.host.records import RecordStore
from tests.host.conftest import SimFactory, binder, drivers

GPU, AUDIO = "0000:41:00.0", "0000:41:00.1"


def test_whole_group_moves_gpu_and_audio_function(sim: SimFactory) -> None:
    host, kernel = sim("h100-pcie-audio")
    bound = binder(host).bind(30, "claim-a")
    assert drivers(host, GPU, AUDIO) == ["vfio-pci", "vfio-pci"]
    assert [(d.bdf, d.original_driver, d.driver) for d in bound.devices] == [
        (GPU, "nvidia", "vfio-pci"), (AUDIO, "snd_hda_intel", "vfio-pci")]
    assert bound.backend == "legacy"
    assert (bound.device_nodes, bound.control_nodes) == (("/dev/vfio/30",), ("/dev/vfio/vfio",))
    assert (kernel.dev / "vfio" / "30").exists()
    assert (kernel.sys / "module" / "vfio_pci").is_dir()  # the binder loaded the module


def test_restore_puts_every_device_back_exactly(sim: SimFactory) -> None:
    host, kernel = sim("h100-pcie-audio")
    b = binder(host)
    b.bind(30, "claim-a")
    b.restore(30, "claim-a")
    assert drivers(host, GPU, AUDIO) == ["nvidia", "snd_hda_intel"]
    assert [m.driver_override for m in b.status(30).members] == [None, None]
    assert not (kernel.dev / "vfio" / "30").exists()
    assert RecordStore(host.roots.state).read(30) is None


def _write(host, bdf: str, attr: str, value: str) -> None:  # type: ignore[no-untyped-def]
    host.io.write_text(host.roots.pci_devices / bdf / attr, value)


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        pytest.param("vfio", ("vfio-pci", "vfio-pci"), id="already-on-vfio-pci"),
        pytest.param("none", (None, None), id="no-driver"),
        pytest.param("stub", ("pci-stub", "pci-stub"), id="pci-stub-with-override"),
    ],
)
def test_exact_restore_of_unusual_originals(
    sim: SimFactory, setup: str, expected: tuple[str | None, str | None]
) -> None:
    host, _ = sim("h100-pcie-audio")
    host.io.write_text(host.roots.pci_drivers / "nvidia" / "unbind", GPU)
    if setup == "vfio":
        host.io.load_module("vfio_pci")
        _write(host, GPU, "driver_override", "vfio-pci")
        host.io.write_text(host.roots.pci_drivers / "vfio-pci" / "bind", GPU)
    elif setup == "stub":
        _write(host, GPU, "driver_override", "pci-stub")
        host.io.write_text(host.roots.pci_drivers / "pci-stub" / "bind", GPU)
    before = binder(host).status(30).members[0]
    b = binder(host)
    b.bind(30, "t")
    assert drivers(host, GPU) == ["vfio-pci"]
    b.restore(30, "t")
    after = b.status(30).members[0]
    assert (after.driver, after.driver_override) == (before.driver, before.driver_override) == expected


def test_foreign_device_in_group_is_refused_and_nothing_moves(sim: SimFactory) -> None:
    host, _ = sim("shared-group-nic")
    with pytest.raises(ForeignDeviceError, match=r"0000:83:00.0 \[15b3:1021\] in IOMMU group 31.*allow-list"):
        binder(host).bind(31, "t")
    assert drivers(host, "0000:82:00.0", "0000:83:00.0") == ["nvidia", "mlx5_core"]
    assert RecordStore(host.roots.state).read(31) is None


@pytest.mark.parametrize("entry", ["0000:83:00.0", "15b3:1021", "15b3:*"], ids=["bdf", "ids", "vendor"])
def test_allow_list_lets_a_foreign_device_go_and_bridges_stay(sim: SimFactory, entry: str) -> None:
    host, _ = sim("shared-group-nic")
    b = binder(host, allowed_devices=frozenset({entry}))
    bound = b.bind(31, "t")
    assert {d.bdf for d in bound.devices} == {"0000:82:00.0", "0000:83:00.0"}
    assert drivers(host, "0000:81:00.0", "0000:82:00.0", "0000:83:00.0") == ["pcieport", "vfio-pci", "vfio-pci"]
    b.restore(31, "t")
    assert drivers(host, "0000:81:00.0", "0000:82:00.0", "0000:83:00.0") == ["pcieport", "nvidia", "mlx5_core"]


def test_bridge_on_an_unsafe_driver_makes_the_group_unusable(sim: SimFactory) -> None:
    host, kernel = sim("two-gpus-one-group")
    host.io.write_text(host.roots.pci_drivers / "pcieport" / "unbind", "0000:c1:00.0")
    assert binder(host).bind(32, "t").group == 32  # a bridge on no driver is fine
    binder(host).restore(32, "t")
    with kernel.locked() as state:
        state["drivers"]["mlx5_core"]["match"].append({"class": "0604"})
    host.io.write_text(host.roots.pci_drivers / "mlx5_core" / "bind", "0000:c1:00.0")
    with pytest.raises(GroupNotViableError, match=r"bridge 0000:c1:00\.0"):
        binder(host).bind(32, "t")


def test_two_gpus_in_one_group_bind_and_restore_together(sim: SimFactory) -> None:
    host, _ = sim("two-gpus-one-group")
    b = binder(host)
    assert b.group_of("0000:c3:00.0") == 32
    bound = b.bind(32, "t")
    assert [d.bdf for d in bound.devices] == ["0000:c2:00.0", "0000:c3:00.0"]
    assert drivers(host, "0000:c2:00.0", "0000:c3:00.0") == ["vfio-pci", "vfio-pci"]
    b.restore(32, "t")
    assert drivers(host, "0000:c2:00.0", "0000:c3:00.0") == ["nvidia", "nvidia"]


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOMEM, errno.EINVAL])
def test_failing_bind_in_the_middle_of_a_group_rolls_back(sim: SimFactory, err: int) -> None:
    host, kernel = sim("h100-pcie-audio")
    kernel.set_bind_behaviour(AUDIO, "fail", err)
    with pytest.raises(BindFailedError, match=rf"binding {AUDIO} to vfio-pci failed with {errno.errorcode[err]}"):
        binder(host).bind(30, "t")
    assert drivers(host, GPU, AUDIO) == ["nvidia", "snd_hda_intel"]
    assert [m.driver_override for m in binder(host).status(30).members] == [None, None]
    assert RecordStore(host.roots.state).read(30) is None
    assert not (kernel.dev / "vfio" / "30").exists()


def test_bind_that_never_completes_times_out_clearly_and_rolls_back(sim: SimFactory) -> None:
    host, kernel = sim("h100-pcie-audio")
    kernel.set_bind_behaviour(AUDIO, "never")
    with pytest.raises(BindTimeoutError, match=rf"timed out after 0.5s waiting for {AUDIO} to bind to vfio-pci") as ei:
        binder(host).bind(30, "t")
    assert isinstance(ei.value, TemporaryError) and ei.value.retry_after
    assert drivers(host, GPU, AUDIO) == ["nvidia", "snd_hda_intel"]


def test_gpu_in_use_is_refused_after_a_bounded_wait(sim: SimFactory) -> None:
    host, kernel = sim("dgx-h100")
    pid = kernel.hold("0000:18:00.0")
    with pytest.raises(GpuInUseError, match=rf"0000:18:00.0 in IOMMU group 10 is in use by PID\(s\) {pid}"):
        binder(host).bind(10, "t")
    assert drivers(host, "0000:18:00.0") == ["nvidia"]
    assert RecordStore(host.roots.state).read(10) is None


def test_gpu_released_during_the_wait_binds(sim: SimFactory) -> None:
    host, kernel = sim("dgx-h100")
    pid = kernel.hold("0000:18:00.0")
    timer = threading.Timer(0.1, kernel.release, args=(pid,))
    timer.start()
    try:
        assert binder(host, in_use_timeout=5.0).bind(10, "t").group == 10
    finally:
        timer.cancel()


def test_other_gpus_holders_do_not_block(sim: SimFactory) -> None:
    host, kernel = sim("dgx-h100")
    kernel.hold("0000:2a:00.0")
    assert binder(host).bind(10, "t").group == 10


def test_sriov_virtual_functions_are_refused(sim: SimFactory) -> None:
    host, kernel = sim("shared-group-nic")
    kernel.set_sriov("0000:83:00.0", 4)
    with pytest.raises(SriovActiveError, match=r"0000:83:00\.0.*4 SR-IOV virtual functions"):
        binder(host, allowed_devices=frozenset({"15b3:*"})).bind(31, "t")


def test_no_iommu_is_a_typed_error(sim: SimFactory) -> None:
    host, _ = sim("no-iommu")
    with pytest.raises(NoIommuError):
        binder(host).bind(0, "t")
    with pytest.raises(GroupNotFoundError, match="no IOMMU group"):
        binder(host).group_of("0000:41:00.0")


def test_unknown_group_and_device(sim: SimFactory) -> None:
    host, _ = sim("dgx-h100")
    with pytest.raises(GroupNotFoundError, match="group 999"):
        binder(host).bind(999, "t")
    with pytest.raises(DeviceVanishedError):
        binder(host).group_of("0000:ee:00.0")


def test_vanished_gpu_is_reported(sim: SimFactory) -> None:
    host, kernel = sim("h100-pcie-audio")
    b = binder(host)
    b.bind(30, "t")
    kernel.remove_device(GPU)
    b.restore(30, "t")  # what is left is restored; the vanished device is skipped
    assert drivers(host, AUDIO) == ["snd_hda_intel"]


def test_bind_and_restore_are_idempotent(sim: SimFactory) -> None:
    host, kernel = sim("h100-pcie-audio")
    b = binder(host)
    first = b.bind(30, "t")
    events = len(kernel.events())
    assert b.bind(30, "t") == first
    assert len(kernel.events()) == events  # no sysfs write at all
    b.restore(30, "t")
    events = len(kernel.events())
    b.restore(30, "t")
    b.restore(30, "someone-else")  # nothing recorded: nothing to refuse either
    assert len(kernel.events()) == events


def test_group_held_by_another_owner_is_refused_unless_forced(sim: SimFactory) -> None:
    host, _ = sim("h100-pcie-audio")
    b = binder(host)
    b.bind(30, "plugin")
    with pytest.raises(GroupOwnedError, match="held by 'plugin'"):
        b.bind(30, "admin")
    with pytest.raises(GroupOwnedError):
        b.restore(30, "admin")
    assert b.bind(30, "admin", force=True).owner == "admin"
    b.restore(30, "plugin", force=True)
    assert drivers(host, GPU, AUDIO) == ["nvidia", "snd_hda_intel"]


def test_drifted_group_is_rebound(sim: SimFactory) -> None:
    host, _ = sim("h100-pcie-audio")
    b = binder(host)
    b.bind(30, "t")
    host.io.write_text(host.roots.pci_drivers / "vfio-pci" / "unbind", AUDIO)  # someone meddled
    b.bind(30, "t")
    assert drivers(host, GPU, AUDIO) == ["vfio-pci", "vfio-pci"]
    b.restore(30, "t")
    assert drivers(host, GPU, AUDIO) == ["nvidia", "snd_hda_intel"]


def test_iommufd_backend_uses_cdevs_only(sim: SimFactory) -> None:
    host, kernel = sim("blackwell-iommufd")
    b = binder(host, backend="prefer-iommufd")
    bound = b.bind(50, "t")
    assert bound.backend == "iommufd"
    assert bound.device_nodes == (f"/dev/vfio/devices/{bound.devices[0].vfio_cdev}",)
    assert bound.control_nodes == ("/dev/iommu",)
    assert (kernel.dev / "vfio" / "devices" / str(bound.devices[0].vfio_cdev)).exists()
    b.restore(50, "t")
    assert not list((kernel.dev / "vfio" / "devices").iterdir())
    legacy = binder(host).bind(51, "t")
    assert (legacy.backend, legacy.device_nodes) == ("legacy", ("/dev/vfio/51",))


@pytest.mark.parametrize(
    ("topology", "group", "backend"),
    [
        pytest.param("dgx-h100", 10, "legacy", id="legacy-group-node"),
        pytest.param("blackwell-iommufd", 50, "prefer-iommufd", id="iommufd-cdev"),
    ],
)
def test_restore_refuses_while_a_vmm_holds_the_group(sim: SimFactory, topology: str, group: int, backend: str) -> None:
    """vfio-pci's unbind blocks until userspace lets go: the binder must look first and leave the group alone."""
    host, kernel = sim(topology)
    b = binder(host, backend=backend)
    bound = b.bind(group, "t")
    (gpu,) = (d.bdf for d in bound.devices)
    pid = kernel.hold_node(bound.device_nodes[0])
    with pytest.raises(GroupInUseError, match=rf"IOMMU group {group} is still open .* by pid {pid}") as ei:
        b.restore(group, "t")
    assert isinstance(ei.value, TemporaryError) and ei.value.retry_after
    assert drivers(host, gpu) == ["vfio-pci"]
    assert RecordStore(host.roots.state).read(group) is not None, "the record stays for the retry"
    kernel.release(pid)
    b.restore(group, "t")
    assert drivers(host, gpu) == ["nvidia"]


def test_prefer_iommufd_falls_back_to_legacy_without_dev_iommu(sim: SimFactory) -> None:
    host, _ = sim("dgx-h100-legacy")
    assert binder(host, backend="prefer-iommufd").bind(10, "t").backend == "legacy"


def test_variant_driver_from_modules_alias(sim: SimFactory) -> None:
    host, _ = sim("gh200")
    b = binder(host)
    bound = b.bind(60, "t")
    assert bound.devices[0].driver == "nvgrace_gpu_vfio_pci"
    assert drivers(host, "0009:01:00.0") == ["nvgrace_gpu_vfio_pci"]
    b.restore(60, "t")
    assert drivers(host, "0009:01:00.0") == ["nvidia"]


def test_reset_function(sim: SimFactory) -> None:
    host, kernel = sim("h100-pcie-audio")
    b = binder(host)
    b.reset_function(GPU)
    assert kernel.reset_count(GPU) == 1
    (kernel.device_dir(GPU) / "reset_method").write_text("\n")
    with pytest.raises(ResetUnsupportedError, match=GPU):
        b.reset_function(GPU)


def test_corrupt_record_is_a_typed_error_and_kept(sim: SimFactory) -> None:
    host, _ = sim("h100-pcie-audio")
    store = RecordStore(host.roots.state)
    store.dir.mkdir(parents=True)
    (store.dir / "group-30.json").write_text("{not json")
    with pytest.raises(RecordCorruptError, match=r"group-30\.json"):
        binder(host).bind(30, "t")
    assert (store.dir / "group-30.json").exists()


def test_bind_timeout_is_temporary_and_policy_rejects_bad_backend() -> None:
    assert issubclass(BindTimeoutError, TemporaryError)
    with pytest.raises(ValueError, match="backend"):
        BindPolicy(backend="vfio-magic")


def test_failed_restore_keeps_the_record_and_can_be_retried(sim: SimFactory) -> None:
    host, kernel = sim("h100-pcie-audio")
    b = binder(host)
    b.bind(30, "t")
    kernel.set_bind_behaviour(GPU, "fail", errno.EIO, driver="nvidia")
    with pytest.raises(RestoreFailedError, match=rf"{GPU} -> nvidia.*record is kept"):
        b.restore(30, "t")
    assert drivers(host, GPU, AUDIO) == [None, "snd_hda_intel"]
    record = RecordStore(host.roots.state).read(30)
    assert record is not None and record.phase == "restoring"
    assert b.interrupted() == [30]
    kernel.set_bind_behaviour(GPU, "ok")
    b.restore(30, "t")
    assert drivers(host, GPU, AUDIO) == ["nvidia", "snd_hda_intel"]
    assert b.interrupted() == []


def test_gpu_vanishing_during_a_bind_rolls_back_the_rest(sim: SimFactory) -> None:
    host, kernel = sim("h100-pcie-audio")
    kernel.set_bind_behaviour(AUDIO, "never")
    timer = threading.Timer(0.1, kernel.remove_device, args=(AUDIO,))
    timer.start()
    try:
        with pytest.raises((DeviceVanishedError, BindTimeoutError)):
            binder(host, bind_timeout=2.0).bind(30, "t")
    finally:
        timer.join()
    assert drivers(host, GPU) == ["nvidia"]
    assert RecordStore(host.roots.state).read(30) is None


def test_status_reports_members_owner_and_viability(sim: SimFactory) -> None:
    host, _ = sim("two-gpus-one-group")
    b = binder(host)
    st = b.status(32)
    assert (st.owner, st.phase, st.viable, st.vfio_node) == (None, None, False, False)
    assert [m.is_bridge for m in st.members] == [True, False, False]
    b.bind(32, "claim")
    st = b.status(32)
    assert (st.owner, st.phase, st.viable, st.vfio_node) == ("claim", "bound", True, True)


def test_emulated_devices_bind_with_an_injected_policy(sim: SimFactory) -> None:
    host, kernel = sim("emulated-edu")
    with pytest.raises(ForeignDeviceError):
        binder(host).bind(3, "t")
    edu = DeviceFilter(frozenset({0x1234}), frozenset({0x00FF}))
    b = binder(host, passthrough=edu)
    bound = b.bind(3, "t")
    assert [(d.original_driver, d.driver) for d in bound.devices] == [(None, "vfio-pci")]
    assert (kernel.dev / "vfio" / "3").exists()
    b.restore(3, "t")
    assert drivers(host, "0000:00:03.0") == [None]
    assert b.status(3).members[0].driver_override is None


def test_viability_is_checked_from_sysfs_not_inferred_from_the_node(sim: SimFactory) -> None:
    # Linux creates /dev/vfio/<group> with the group's first vfio device, viable or not; the binder checks members.
    host, _ = sim("h100-pcie-audio")
    b = binder(host)
    with pytest.raises(GroupNotViableError, match=rf"IOMMU group 30 is not viable: {GPU} on nvidia, {AUDIO} on snd"):
        b._check_viable(30, None)
    host.io.write_text(host.roots.pci_drivers / "nvidia" / "unbind", GPU)
    host.io.write_text(host.roots.pci_drivers / "snd_hda_intel" / "unbind", AUDIO)
    b._check_viable(30, None)
