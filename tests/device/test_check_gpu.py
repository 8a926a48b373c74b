"""The device-check script against an NVML stand-in: it runs every section, reads only, and reports what it found.

NVML cannot run here (no NVIDIA GPU), so a stand-in module with pynvml's names answers: once for a GPU with CC off
(evidence refused as NVML refuses it) and once for one with CC on, answering with NVIDIA's real 2.7.3 sample report
(our nonce is not its nonce, so the verdict must say exactly that). On a real GPU the same script runs unchanged.
"""

from __future__ import annotations

import base64
import json
import types
from pathlib import Path
from typing import Any

import pytest

from tests.device.check_gpu import ReadOnlyNvml, WriteRefusedError, run

VECTORS = Path(__file__).parents[1] / "attest" / "vectors" / "nvidia-attestation-sdk"
SAMPLE = VECTORS / "evidence_json" / "nvv273_hopper.json"


def stand_in(cc_on: bool) -> types.ModuleType:
    mod = types.ModuleType("pynvml")

    class NVMLError_NotSupported(Exception):  # pynvml's naming
        pass

    (item,) = json.loads(SAMPLE.read_text())
    report, chain = base64.b64decode(item["evidence"]), base64.b64decode(item["certificate"])
    state = types.SimpleNamespace(environment=1, ccFeature=int(cc_on), devToolsMode=0)
    fns: dict[str, Any] = {
        "nvmlInit": lambda: None, "nvmlShutdown": lambda: None,
        "nvmlSystemGetNVMLVersion": lambda: "12.575.51", "nvmlSystemGetDriverVersion": lambda: "575.51.03",
        "nvmlSystemGetCudaDriverVersion": lambda: 12090, "nvmlDeviceGetCount": lambda: 1,
        "nvmlDeviceGetHandleByIndex": lambda i: "h0", "nvmlDeviceGetHandleByPciBusId": lambda bdf: "h0",
        "nvmlDeviceGetPciInfo": lambda h: types.SimpleNamespace(busId=b"00000000:18:00.0"),
        "nvmlDeviceGetName": lambda h: b"NVIDIA H100 80GB HBM3", "nvmlDeviceGetUUID": lambda h: "GPU-1234",
        "nvmlDeviceGetVbiosVersion": lambda h: "96.00.9F.00.01", "nvmlDeviceGetArchitecture": lambda h: 9,
        "nvmlSystemGetConfComputeState": lambda: state,
        "nvmlSystemGetConfComputeSettings": lambda: types.SimpleNamespace(ccFeature=int(cc_on), multiGpuMode=0),
        "nvmlSystemGetConfComputeCapabilities": lambda: types.SimpleNamespace(cpuCaps=2, gpusCaps=1),
        "nvmlSystemGetConfComputeGpusReadyState": lambda: 0,
        "nvmlDeviceSetPersistenceMode": lambda h, m: pytest.fail("a setter was reached"),
    }

    def attestation_report(h: str, nonce: bytes) -> Any:
        if not cc_on:
            raise NVMLError_NotSupported("Not Supported")
        return types.SimpleNamespace(attestationReport=report, attestationReportSize=len(report))

    def certificate(h: str) -> Any:
        return types.SimpleNamespace(attestationCertChain=chain, attestationCertChainSize=len(chain))

    fns["nvmlDeviceGetConfComputeGpuAttestationReport"] = attestation_report
    fns["nvmlDeviceGetConfComputeGpuCertificate"] = certificate
    for name, fn in fns.items():
        setattr(mod, name, fn)
    return mod


def _run(tmp_path: Path, cc_on: bool) -> dict[str, Any]:
    assert run(stand_in(cc_on), tmp_path, discovery=lambda: {"gpus": []}) == 0
    return dict(json.loads((tmp_path / "device-check.json").read_text()))


def test_cc_off_gpu_refuses_evidence_and_the_check_still_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
    report = _run(tmp_path, cc_on=False)
    s = report["sections"]
    assert s["versions"]["driver_version"] == "575.51.03"
    assert s["versions"]["gpus"][0]["pci_bus_id"] == "00000000:18:00.0"
    assert s["cc"]["cc_on"] is False
    (evidence,) = s["evidence"]
    assert evidence["outcome"] == "refused as expected (CC off)" and evidence["error"] == "NVMLError_NotSupported"
    assert "refused as expected" in capsys.readouterr().out
    reads = ("nvmlInit", "nvmlShutdown", "nvmlDeviceGet", "nvmlSystemGet")
    assert all(c.startswith(reads) for c in report["nvml_calls"])


def test_cc_on_gpu_evidence_is_parsed_and_verified(tmp_path: Path) -> None:
    (evidence,) = _run(tmp_path, cc_on=True)["sections"]["evidence"]
    verdict = evidence["verdict"]
    checks = {c["name"]: c["status"] for c in verdict["checks"]}
    assert checks["x-nvidia-gpu-attestation-report-parsed"] == "pass"
    assert checks["x-nvidia-gpu-attestation-report-cert-chain"] == "pass"
    assert checks["x-nvidia-gpu-attestation-report-signature-verified"] == "pass"
    assert checks["x-nvidia-gpu-attestation-report-nonce-match"] == "fail", "the stand-in's report is for another nonce"
    assert evidence["outcome"] == "REJECTED" and verdict["driver_version"] == "550.90.07"


def test_no_setter_can_be_reached() -> None:
    nv = ReadOnlyNvml(stand_in(cc_on=True))
    for name in ("nvmlDeviceSetPersistenceMode", "nvmlSystemSetConfComputeGpusReadyState",
                 "nvmlDeviceResetGpuLockedClocks", "nvmlDeviceClearEccErrorCounts"):
        with pytest.raises(WriteRefusedError, match=name):
            getattr(nv, name)
