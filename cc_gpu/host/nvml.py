"""NVML for this process: short sessions that never overlap a bind, and the facts NVML adds to discovery.

An initialised NVML keeps `/dev/nvidiactl` and every `/dev/nvidia<N>` open in the calling process. The binder refuses
to unbind `nvidia` from a GPU whose device node any process holds open (`inuse.py`), this one included, so a plugin
that initialised NVML once and kept it would refuse to bind its own GPUs. Hence every use of NVML, discovery's
enrichment and attestation's evidence alike, goes through `NvmlSessions.session()` (`nvmlInit` ... `nvmlShutdown`),
and `NvmlGate` keeps sessions and binds apart within the process: a bind waits for the open session to end, and no
session starts while a bind runs. The gate is one per process because what it guards, the process's open
descriptors, is.

NVML cannot see a GPU on vfio-pci, and most machines (CI, the kernel-test guest, a node whose GPUs are all passed
through) have no NVML at all: its absence is a normal state, reported as `None`, never an exception. Discovery is
done from sysfs; NVML only adds facts.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cc_gpu.errors import HostError, TemporaryError

log = logging.getLogger(__name__)


class NvmlUnavailableError(HostError, TemporaryError):
    """NVML could not be loaded or started in this process."""


class NvmlGate:
    """Sessions one at a time, and never while a bind runs (binds may overlap each other).

    A thread that holds the session may open nested ones (one NVML session, counted); a bind from inside its own
    session is a programming error, raised at once instead of waiting for itself forever.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._owner: int | None = None  # the thread holding the session
        self._depth = 0
        self._binds = 0

    @contextlib.contextmanager
    def session_slot(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner != me:
                self._cond.wait_for(lambda: self._owner is None and self._binds == 0)
                self._owner = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self._cond.notify_all()

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """While the body runs (a bind), no NVML session is open in this process."""
        with self._cond:
            if self._owner == threading.get_ident():
                raise RuntimeError("a bind inside this thread's own NVML session would find the GPU held by us")
            self._cond.wait_for(lambda: self._owner is None)
            self._binds += 1
        try:
            yield
        finally:
            with self._cond:
                self._binds -= 1
                self._cond.notify_all()

    @property
    def session_open(self) -> bool:
        with self._cond:
            return self._owner is not None


PROCESS_GATE = NvmlGate()


def preload_library(path: Path) -> bool:
    """Load NVML's library from `path` so that pynvml's own `dlopen("libnvidia-ml.so.1")` finds it.

    The dynamic linker answers a dlopen by soname with an object already loaded under that soname, so the library
    comes from an explicit path (a container's read-only mount of the node's driver directory) without putting that
    directory on the search path, where the node's other libraries could shadow the process's own. A missing or
    unloadable library is the normal 'no NVML' state: logged, and False.
    """
    try:
        ctypes.CDLL(str(path))
    except OSError as e:
        log.info("NVML library not loaded from %s (%s); continuing without NVML", path, e)
        return False
    return True


def load_pynvml() -> Any:
    import pynvml  # noqa: PLC0415 - optional, heavy, and absent on most test machines

    return pynvml


class NvmlSessions:
    """Opens NVML sessions through `loader` (pynvml, or a stand-in module in tests) under the process's gate."""

    def __init__(self, loader: Callable[[], Any] | None = None, gate: NvmlGate = PROCESS_GATE) -> None:
        self._loader = loader or load_pynvml
        self.gate = gate

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """The NVML module, initialised for the body and shut down after it (whatever the body raises)."""
        try:
            nv = self._loader()
        except Exception as e:  # NVML missing is a normal state of a machine, not a crash
            raise NvmlUnavailableError(f"NVML is not available: {type(e).__name__}: {e}") from e
        with self.gate.session_slot():
            try:
                nv.nvmlInit()
            except Exception as e:
                raise NvmlUnavailableError(f"NVML could not start: {type(e).__name__}: {e}") from e
            try:
                yield nv
            finally:
                with contextlib.suppress(Exception):
                    nv.nvmlShutdown()


@dataclass(frozen=True)
class NvmlDeviceInfo:
    """What NVML adds to a GPU discovered from sysfs."""

    uuid: str
    memory_bytes: int
    vbios_version: str
    driver_version: str
    cc_mode: str | None  # "on" | "off" | "devtools" | "ppcie" | None when NVML cannot say


class Nvml(Protocol):
    def device_info(self, bdf: str) -> NvmlDeviceInfo | None:
        """Facts about the GPU at `bdf`, or None when NVML is missing or does not manage that GPU."""
        ...

    def batch(self) -> contextlib.AbstractContextManager[None]:
        """Questions asked in the body (by this thread) share one NVML session: one discovery pass, one start-up."""
        ...


class NoNvml:
    """NVML absent."""

    def device_info(self, bdf: str) -> NvmlDeviceInfo | None:
        return None

    def batch(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# nvmlSystemGetConfComputeSettings: devToolsMode / ccFeature / multiGpuMode, mapped to the GPU Operator's names.
def _cc_mode_from_settings(settings: Any) -> str | None:
    try:
        if getattr(settings, "multiGpuMode", 0):
            return "ppcie"
        if getattr(settings, "devToolsMode", 0):
            return "devtools"
        return "on" if getattr(settings, "ccFeature", 0) else "off"
    except Exception:  # pragma: no cover - a driver returning a struct without these fields
        return None


class PynvmlReader:
    """NVML through `pynvml`: one session per question, or per `batch()`; a failure to start means 'no NVML' from
    then on. Starting NVML can take seconds per GPU where no persistence daemon keeps the driver initialised, so a
    discovery pass asks all its questions in one session."""

    def __init__(self, sessions: NvmlSessions | None = None) -> None:
        self._sessions = sessions or NvmlSessions()
        self._failed = False
        self._batch = threading.local()  # the open module of this thread's batch, if any

    def _unavailable(self, e: NvmlUnavailableError) -> None:
        log.info("NVML not available (%s); continuing from sysfs only", e)
        self._failed = True

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        if self._failed or getattr(self._batch, "nv", None) is not None:
            yield  # no NVML, or already inside this thread's batch
            return
        with contextlib.ExitStack() as stack:
            try:
                self._batch.nv = stack.enter_context(self._sessions.session())
            except NvmlUnavailableError as e:
                self._unavailable(e)
            try:
                yield
            finally:
                self._batch.nv = None

    def device_info(self, bdf: str) -> NvmlDeviceInfo | None:
        if self._failed:
            return None
        nv = getattr(self._batch, "nv", None)
        if nv is not None:
            return self._read(nv, bdf)
        try:
            with self._sessions.session() as nv:
                return self._read(nv, bdf)
        except NvmlUnavailableError as e:
            self._unavailable(e)
            return None

    @staticmethod
    def _read(nv: Any, bdf: str) -> NvmlDeviceInfo | None:
        try:
            handle = nv.nvmlDeviceGetHandleByPciBusId(bdf)
            memory = nv.nvmlDeviceGetMemoryInfo(handle).total
            uuid = _text(nv.nvmlDeviceGetUUID(handle))
            vbios = _text(nv.nvmlDeviceGetVbiosVersion(handle))
            driver = _text(nv.nvmlSystemGetDriverVersion())
        except Exception as e:
            log.info("NVML has no data for %s (%s)", bdf, type(e).__name__)
            return None
        try:
            cc = _cc_mode_from_settings(nv.nvmlSystemGetConfComputeSettings())
        except Exception:
            cc = None
        return NvmlDeviceInfo(uuid, int(memory), vbios, driver, cc)
