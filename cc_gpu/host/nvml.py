"""Optional NVML enrichment: UUID, memory, VBIOS and driver versions, CC state for GPUs on the `nvidia` driver.

NVML cannot see a GPU on vfio-pci, and most machines (CI, the kernel-test guest, a node whose GPUs are all passed
through) have no NVML at all: its absence is a normal state, reported as `None`, never an exception. Discovery is
done from sysfs; NVML only adds facts.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


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


class NoNvml:
    """NVML absent."""

    def device_info(self, bdf: str) -> NvmlDeviceInfo | None:
        return None


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
    """NVML through the `pynvml` module (nvidia-ml-py). Initialised lazily, once; any failure means 'no NVML'."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._failed = False

    def _load(self) -> Any:
        with self._lock:
            if self._nvml is None and not self._failed:
                try:
                    import pynvml  # noqa: PLC0415 - optional, heavy, and absent on most test machines

                    pynvml.nvmlInit()
                    self._nvml = pynvml
                except Exception as e:
                    log.info("NVML not available (%s); continuing from sysfs only", type(e).__name__)
                    self._failed = True
            return self._nvml

    def device_info(self, bdf: str) -> NvmlDeviceInfo | None:
        nv = self._load()
        if nv is None:
            return None
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
