"""NVML enrichment through `pynvml`: the mapping of its answers, and its absence or failure as a normal state.

NVML cannot run here (no NVIDIA driver), so a stand-in module with pynvml's function names answers; the reader's own
code, lazy import and error handling included, is what runs.
"""

from __future__ import annotations

import sys
import types

import pytest

from cc_gpu.host.nvml import NvmlDeviceInfo, PynvmlReader


def _fake_pynvml(*, init_fails: bool = False, settings: dict[str, int] | None = None) -> types.ModuleType:
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init() -> None:
        if init_fails:
            raise NVMLError("NVML Shared Library Not Found")

    def handle(bdf: str) -> str:
        if bdf != "0000:18:00.0":
            raise NVMLError("Not Found")
        return "h0"

    def conf_settings() -> types.SimpleNamespace:
        if settings is None:
            raise NVMLError("Not Supported")
        return types.SimpleNamespace(**settings)

    mod.__dict__.update(
        NVMLError=NVMLError,
        nvmlInit=init,
        nvmlDeviceGetHandleByPciBusId=handle,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=80 << 30),
        nvmlDeviceGetUUID=lambda h: b"GPU-0f0e",
        nvmlDeviceGetVbiosVersion=lambda h: "96.00.99.00.01",
        nvmlSystemGetDriverVersion=lambda: b"570.124.06",
        nvmlSystemGetConfComputeSettings=conf_settings,
    )
    return mod


@pytest.mark.parametrize(
    ("settings", "mode"),
    [
        pytest.param({"ccFeature": 1, "devToolsMode": 0, "multiGpuMode": 0}, "on", id="on"),
        pytest.param({"ccFeature": 0, "devToolsMode": 0, "multiGpuMode": 0}, "off", id="off"),
        pytest.param({"ccFeature": 1, "devToolsMode": 1, "multiGpuMode": 0}, "devtools", id="devtools"),
        pytest.param({"ccFeature": 1, "devToolsMode": 0, "multiGpuMode": 1}, "ppcie", id="ppcie"),
        pytest.param(None, None, id="cc-not-supported"),
    ],
)
def test_device_info(monkeypatch: pytest.MonkeyPatch, settings: dict[str, int] | None, mode: str | None) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(settings=settings))
    info = PynvmlReader().device_info("0000:18:00.0")
    assert info == NvmlDeviceInfo("GPU-0f0e", 80 << 30, "96.00.99.00.01", "570.124.06", mode)


def test_unknown_device_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    assert PynvmlReader().device_info("0000:99:00.0") is None


def test_nvml_missing_is_a_normal_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(init_fails=True))
    reader = PynvmlReader()
    assert reader.device_info("0000:18:00.0") is None
    assert reader.device_info("0000:18:00.0") is None  # not retried on every call


def test_real_nvml_on_this_machine_answers_or_says_none() -> None:
    info = PynvmlReader().device_info("0000:18:00.0")
    assert info is None or isinstance(info, NvmlDeviceInfo)
