"""Parallel binds, per-group locking across threads and processes, crash mid-bind and restore from another process,
and waiting on uevents (the simulated log and the real kernel's netlink socket)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from cc_gpu.host.binder import Binder
from cc_gpu.host.errors import GroupLockedError, GroupOwnedError
from cc_gpu.host.records import RecordStore
from cc_gpu.host.sim import create_sim_host
from cc_gpu.host.uevents import NetlinkUevents, PollingOnly
from tests.host.conftest import SimFactory, binder, drivers

REPO = Path(__file__).resolve().parents[2]
DGX_GROUPS = list(range(10, 18))


def test_different_groups_bind_in_parallel(sim: SimFactory) -> None:
    host, kernel = sim("dgx-h100")
    kernel.set_default_bind_delay(0.3)
    b = binder(host, bind_timeout=5.0)
    spans: dict[int, tuple[float, float]] = {}

    def one(group: int) -> None:
        start = time.monotonic()
        b.bind(group, f"claim-{group}")
        spans[group] = (start, time.monotonic())

    threads = [threading.Thread(target=one, args=(g,)) for g in DGX_GROUPS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(spans) == DGX_GROUPS
    # Every bind was in flight at the same moment: none waited for another group's slow probe to finish.
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values())
    assert all(b.status(g).vfio_node for g in DGX_GROUPS)


def test_one_group_is_bound_once_under_concurrent_calls(sim: SimFactory) -> None:
    host, kernel = sim("h100-pcie-audio")
    kernel.set_default_bind_delay(0.1)
    b = binder(host, lock_timeout=5.0, bind_timeout=5.0)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(b.bind(30, "same"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(r == results[0] for r in results)
    binds = [e for e in kernel.events() if e["ACTION"] == "bind" and e.get("DRIVER") == "vfio-pci"]
    assert len(binds) == 2  # GPU and audio, once each


def test_two_owners_racing_for_one_group(sim: SimFactory) -> None:
    host, kernel = sim("h100-pcie-audio")
    kernel.set_default_bind_delay(0.1)
    b = binder(host, lock_timeout=5.0, bind_timeout=5.0)
    outcomes: dict[str, str] = {}

    def one(owner: str) -> None:
        try:
            b.bind(30, owner)
            outcomes[owner] = "bound"
        except GroupOwnedError:
            outcomes[owner] = "refused"

    threads = [threading.Thread(target=one, args=(o,)) for o in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values()) == ["bound", "refused"]


def _python(code: str, root: Path, **env_extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(root)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_group_lock_holds_across_processes(tmp_path: Path) -> None:
    root = tmp_path / "node"
    host = create_sim_host("h100-pcie-audio", root)
    ready = tmp_path / "ready"
    proc = _python(f"""
        import sys, time, pathlib
        from cc_gpu.host.records import RecordStore
        with RecordStore(pathlib.Path(sys.argv[1]) / "var/lib/cc-gpu").lock(30, 5):
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(30)
    """, root)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        with pytest.raises(GroupLockedError, match="IOMMU group 30 is locked"):
            binder(host, lock_timeout=0.2).bind(30, "t")
    finally:
        proc.kill()
        proc.communicate()
    assert binder(host).bind(30, "t").group == 30  # the lock died with the process


def _kill_mid_bind(tmp_path: Path) -> Path:
    """Bind group 30 in another process that is SIGKILLed right after it unbinds the second member (the audio
    function), when the GPU is already on vfio-pci: a named crash point, so the moment is exact, not a race."""
    root = tmp_path / "node"
    create_sim_host("h100-pcie-audio", root)
    proc = _python("""
        import sys
        from cc_gpu.host.binder import Binder, BindPolicy
        from cc_gpu.host.sim import create_sim_host
        host = create_sim_host("h100-pcie-audio", sys.argv[1])
        Binder(host, BindPolicy(bind_timeout=30)).bind(30, "plugin")
    """, root, CC_GPU_CRASH_AT="bind-after-unbind:2")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    return root


def test_restore_from_another_process_after_a_crash_mid_bind(tmp_path: Path) -> None:
    root = _kill_mid_bind(tmp_path)
    host = create_sim_host("h100-pcie-audio", root)
    # The kernel state is what the killed process left: the GPU on vfio-pci, the audio function unbound.
    assert drivers(host, "0000:41:00.0", "0000:41:00.1") == ["vfio-pci", None]
    record = RecordStore(host.roots.state).read(30)
    assert record is not None and (record.owner, record.phase) == ("plugin", "binding")
    b = Binder(host)
    assert b.interrupted() == [30]
    b.restore(30, "plugin")
    assert drivers(host, "0000:41:00.0", "0000:41:00.1") == ["nvidia", "snd_hda_intel"]
    assert [m.driver_override for m in b.status(30).members] == [None, None]
    assert b.interrupted() == []


def test_recover_and_rebind_after_a_crash(tmp_path: Path) -> None:
    root = _kill_mid_bind(tmp_path)
    host = create_sim_host("h100-pcie-audio", root)
    b = Binder(host)
    bound = b.bind(30, "plugin")  # same owner: rolls back the half-done bind, then binds cleanly
    assert [d.original_driver for d in bound.devices] == ["nvidia", "snd_hda_intel"]
    b.restore(30, "plugin")
    assert drivers(host, "0000:41:00.0", "0000:41:00.1") == ["nvidia", "snd_hda_intel"]


def test_recover_leaves_bound_groups_alone(sim: SimFactory) -> None:
    host, _ = sim("dgx-h100")
    b = binder(host)
    b.bind(10, "plugin")
    assert not b.recover(10)
    assert drivers(host, "0000:18:00.0") == ["vfio-pci"]


def test_sim_uevents_reach_a_waiter_in_another_process(tmp_path: Path) -> None:
    root = tmp_path / "node"
    host = create_sim_host("dgx-h100", root)
    with host.uevents.subscribe() as sub:
        proc = _python("""
            import sys
            from cc_gpu.host.sim import SimKernel, create_sim_host
            h = create_sim_host("dgx-h100", sys.argv[1])
            h.io.write_text(h.roots.pci_drivers / "nvidia" / "unbind", "0000:18:00.0")
        """, root)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        event = sub.next(5.0)
    assert event is not None and (event.action, event.name, event.driver) == ("unbind", "0000:18:00.0", "nvidia")


def test_waits_wake_on_uevents_not_the_polling_interval(sim: SimFactory) -> None:
    host, kernel = sim("dgx-h100")
    b = binder(host, poll_interval=30.0, bind_timeout=60.0)
    flag = threading.Event()

    def later() -> None:
        time.sleep(0.05)
        flag.set()
        kernel.emit("change", kernel.device_dir("0000:18:00.0"))

    threading.Thread(target=later).start()
    start = time.monotonic()
    with host.uevents.subscribe() as sub:
        b._wait(flag.is_set, sub, 10, "the flag")
    assert time.monotonic() - start < 30.0  # woken by the event, long before one polling interval


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/sys/class/mem/null/uevent", os.W_OK),
                    reason="needs root to make the kernel emit a uevent")
def test_real_kernel_uevents_through_netlink() -> None:
    with NetlinkUevents().subscribe() as sub:
        with open("/sys/class/mem/null/uevent", "w") as f:
            f.write("change")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            event = sub.next(deadline - time.monotonic())
            if event is not None and event.devpath == "/devices/virtual/mem/null":
                assert event.action == "change" and event.subsystem == "mem"
                return
    pytest.fail("no uevent for /dev/null within 5s")


def test_binding_without_any_uevents_falls_back_to_polling(sim: SimFactory) -> None:
    host, _ = sim("h100-pcie-audio")
    silent = replace(host, uevents=PollingOnly())
    b = binder(silent)
    assert b.bind(30, "t").device_nodes == ("/dev/vfio/30",)
    b.restore(30, "t")
    assert drivers(host, "0000:41:00.0", "0000:41:00.1") == ["nvidia", "snd_hda_intel"]
