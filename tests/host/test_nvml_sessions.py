"""NVML sessions never make the binder refuse our own GPUs: sessions are closed after use and never overlap a bind.

An initialised NVML holds `/dev/nvidiactl` and `/dev/nvidia<N>` open in the calling process. The stand-in pynvml
below does the same for real: `nvmlInit` opens the simulated node's device files and `nvmlShutdown` closes them. The
binder's in-use check then scans a /proc that holds this test process itself (beside the simulated driver's files),
so it sees exactly the descriptors this process holds, as it would on a node.
"""

from __future__ import annotations

import contextlib
import os
import threading
import types
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import pytest

from cc_gpu.dra.hostport import HostAdapter
from cc_gpu.dra.settings import Selection
from cc_gpu.host.binder import GpuInUseError
from cc_gpu.host.discovery import discover
from cc_gpu.host.gpuevidence import EvidenceUnavailableError, NvmlEvidenceReader
from cc_gpu.host.host import Host
from cc_gpu.host.nvml import NvmlGate, NvmlSessions, PynvmlReader
from cc_gpu.host.sim import create_sim_host
from tests.host.conftest import binder, drivers

GPU, GROUP = "0000:18:00.0", 10


class HoldingNvml(types.ModuleType):
    """pynvml's session calls, opening every /dev/nvidia* of the node while initialised, as NVML does."""

    def __init__(self, dev: Path) -> None:
        super().__init__("pynvml")
        self.dev = dev
        self.open_files: list[IO[bytes]] = []

    inits = 0

    def nvmlInit(self) -> None:  # pynvml's names
        self.inits += 1
        self.open_files += [path.open("rb") for path in sorted(self.dev.glob("nvidia*"))]

    def nvmlShutdown(self) -> None:
        for f in self.open_files:
            f.close()
        self.open_files = []

    def nvmlDeviceGetHandleByPciBusId(self, bdf: str) -> str:
        return bdf

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        return types.SimpleNamespace(total=80 << 30)

    def nvmlDeviceGetUUID(self, handle: str) -> str:
        return "GPU-0f0e"

    def nvmlDeviceGetVbiosVersion(self, handle: str) -> str:
        return "96.00.99.00.01"

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.124.06"

    def nvmlSystemGetConfComputeSettings(self) -> Any:
        return types.SimpleNamespace(ccFeature=1, devToolsMode=0, multiGpuMode=0)

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: str, nonce: bytes) -> Any:
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")  # fails mid-session: the session must still close


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Host, HoldingNvml]]:
    """A simulated node whose /proc view holds the simulated driver's files and this process."""
    host = create_sim_host("dgx-h100", tmp_path / "sim")
    proc = tmp_path / "proc"
    proc.mkdir()
    for entry in ("driver", "sys"):
        (proc / entry).symlink_to(host.roots.proc / entry)
    (proc / str(os.getpid())).symlink_to(f"/proc/{os.getpid()}")
    module = HoldingNvml(host.roots.dev)
    yield replace(host, roots=replace(host.roots, proc=proc)), module
    module.nvmlShutdown()


def test_an_open_session_is_seen_as_a_holder_of_our_own(node: tuple[Host, HoldingNvml]) -> None:
    """The control: the in-use check does see this process while a session is open, and fails closed."""
    host, module = node
    with NvmlSessions(lambda: module, NvmlGate()).session(), pytest.raises(GpuInUseError) as caught:
        binder(host).bind(GROUP, "claim-a")
    assert str(os.getpid()) in str(caught.value)
    assert drivers(host, GPU) == ["nvidia"]


CLOSED_AFTER_USE = [
    ("discovery facts", lambda s, bdf: PynvmlReader(s).device_info(bdf)),
    ("attestation evidence that fails", lambda s, bdf: NvmlEvidenceReader(sessions=s).collect(bdf, bytes(32))),
]


@pytest.mark.parametrize("use", [c[1] for c in CLOSED_AFTER_USE], ids=[c[0] for c in CLOSED_AFTER_USE])
def test_no_session_outlives_its_use(node: tuple[Host, HoldingNvml], use: Any) -> None:
    host, module = node
    sessions = NvmlSessions(lambda: module, NvmlGate())
    with contextlib.suppress(EvidenceUnavailableError):  # the evidence case fails on purpose
        use(sessions, GPU)
    assert module.open_files == []
    binder(host).bind(GROUP, "claim-a")
    assert drivers(host, GPU) == ["vfio-pci"]


def test_discovery_reader_answers_from_its_session(node: tuple[Host, HoldingNvml]) -> None:
    _, module = node
    info = PynvmlReader(NvmlSessions(lambda: module, NvmlGate())).device_info(GPU)
    assert info is not None
    assert (info.uuid, info.cc_mode) == ("GPU-0f0e", "on")


def test_a_discovery_pass_is_one_session(node: tuple[Host, HoldingNvml]) -> None:
    host, module = node
    host = replace(host, nvml=PynvmlReader(NvmlSessions(lambda: module, NvmlGate())))
    inventory = discover(host)
    on_nvidia = [g for g in inventory.gpus if g.driver == "nvidia"]
    assert len(on_nvidia) == 8
    assert all(g.uuid == "GPU-0f0e" for g in on_nvidia)
    assert module.inits == 1
    assert module.open_files == []
    binder(host).bind(GROUP, "claim-a")


def test_nested_sessions_of_one_thread_and_a_bind_inside_one() -> None:
    gate = NvmlGate()
    with gate.session_slot(), gate.session_slot():  # one thread: nested, not a wait for itself
        assert gate.session_open
        with pytest.raises(RuntimeError, match="own NVML session"), gate.quiet():
            pass
    assert not gate.session_open


def test_the_plugins_bind_waits_for_a_session_in_another_thread(node: tuple[Host, HoldingNvml]) -> None:
    """The plugin's bind path (`HostAdapter.bind`) against a session its discovery or attestation opened meanwhile."""
    host, module = node
    sessions = NvmlSessions(lambda: module)  # the process's gate, as in the plugin
    opened, release, bound = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold_a_session() -> None:
        with sessions.session():
            opened.set()
            release.wait(10)

    def bind() -> None:
        try:
            HostAdapter(host, Selection()).bind(GROUP, "claim-a", "legacy")
        except BaseException as e:  # reported to the test thread
            errors.append(e)
        bound.set()

    holder = threading.Thread(target=hold_a_session)
    holder.start()
    assert opened.wait(5)
    binding = threading.Thread(target=bind)
    binding.start()
    assert not bound.wait(0.5)  # waiting at the gate while the session holds /dev/nvidia*
    release.set()
    assert bound.wait(10)
    holder.join()
    binding.join()
    assert errors == []
    assert drivers(host, GPU) == ["vfio-pci"]


def test_no_session_starts_while_a_bind_runs() -> None:
    gate = NvmlGate()
    started = threading.Event()

    def session() -> None:
        with gate.session_slot():
            started.set()

    with gate.quiet():
        thread = threading.Thread(target=session)
        thread.start()
        assert not started.wait(0.2)
        assert not gate.session_open
    assert started.wait(5)
    thread.join()
