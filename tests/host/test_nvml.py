"""NVML enrichment through `pynvml`: the mapping of its answers, and its absence or failure as a normal state.

NVML cannot run here (no NVIDIA driver), so a stand-in module with pynvml's function names answers; the reader's own
code, lazy import and error handling included, is what runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cc_gpu.host.nvml import NvmlDeviceInfo, PynvmlReader

REPO = Path(__file__).resolve().parents[2]


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


STAND_IN_LIBRARY = """
int nvmlInitWithFlags(unsigned int flags) { return 0; }
int nvmlInit_v2(void) { return 0; }
int nvmlShutdown(void) { return 0; }
"""
PROBE = """
import sys
from pathlib import Path
import pynvml
from cc_gpu.host.nvml import preload_library
if sys.argv[1] != "-":
    print("preloaded" if preload_library(Path(sys.argv[1])) else "not preloaded")
try:
    pynvml.nvmlInit()
    pynvml.nvmlShutdown()
    print("nvml started")
except pynvml.NVMLError as e:
    print("nvml failed:", e)
"""


@pytest.fixture(scope="module")
def stand_in_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A shared object with NVML's soname and session entry points, in a directory not on the search path."""
    out = tmp_path_factory.mktemp("driver-lib")
    source = out / "nvml.c"
    source.write_text(STAND_IN_LIBRARY)
    library = out / "libnvidia-ml.so.1"
    subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1", "-o", str(library), str(source)],
                   check=True, capture_output=True, timeout=60)
    return library


PRELOADS = [
    ("without a preload the library is not found", "-", ["nvml failed: NVML Shared Library Not Found"]),
    ("preloaded from its mount, pynvml finds it by soname", "LIB", ["preloaded", "nvml started"]),
    ("a missing library is the normal 'no NVML' state", "/nonexistent/libnvidia-ml.so.1",
     ["not preloaded", "nvml failed: NVML Shared Library Not Found"]),
]


@pytest.mark.parametrize(("argument", "expected"), [c[1:] for c in PRELOADS], ids=[c[0] for c in PRELOADS])
def test_library_preloaded_from_an_explicit_path(stand_in_library: Path, argument: str, expected: list[str]) -> None:
    """A fresh interpreter each time: a loaded library cannot be unloaded from the test process."""
    arg = str(stand_in_library) if argument == "LIB" else argument
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", PROBE, arg], capture_output=True, text=True, env=env, timeout=60,
                         check=True)
    assert out.stdout.splitlines() == expected
