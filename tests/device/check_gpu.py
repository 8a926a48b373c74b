"""A read-only check of a machine with a real NVIDIA GPU, run in one go: what cc-gpu would see and verify there.

    python -m tests.device.check_gpu [--out DIR] [--bdf 0000:18:00.0]

Sections, each reported even when an earlier one failed:
  1. discovery   cc-gpu's own discovery (sysfs, IOMMU groups, CC mode from BAR0 or NVML)
  2. versions    NVML library, driver, CUDA driver version; per GPU: name, UUID, PCI address, VBIOS, architecture
  3. cc          the system's CC state, settings and capabilities (`nvmlSystemGetConfCompute*`), the GPUs-ready state
  4. evidence    per GPU: an attestation report for a fresh nonce and the certificate chain, parsed and verified by
                 cc_gpu.attest against NVIDIA's roots (revocation off: no network), or NVML's error, which is what a
                 GPU with CC off answers (then recorded as the expected refusal)

It never changes GPU settings: NVML is reached only through `ReadOnlyNvml`, which allows session start/end and
getters by name and refuses everything else (setters, resets, persistence), so a mistake here fails the check instead
of touching the GPU. No BAR is written, no driver is bound or unbound. The JSON report goes to
`<out>/device-check.json` (`$OUT` by default) and a summary to stdout. The exit status is 0 when every section ran (a
GPU in CC mode off still gives 0), 1 when a section failed unexpectedly (no NVML library, for one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The NVML calls this check may make: session start and end, and getters. Everything else (setters, resets, clears,
# event registration, GPU removal and discovery) is refused by name: an allow-list, so a new writer is refused too.
_READS = re.compile(r"^nvml(Init(_v2|WithFlags)?|Shutdown|(Device|System)Get[A-Z]\w*)$")
# NVML error names that mean "this GPU does not attest now" (CC off, no CC capability, wrong driver mode).
EXPECTED_EVIDENCE_ERRORS = ("NotSupported", "InvalidArgument", "NoPermission", "Uninitialized", "InsufficientSize",
                            "NotFound", "FunctionNotFound", "ArgumentVersionMismatch", "GpuNotFound")


class WriteRefusedError(RuntimeError):
    """The check tried to call an NVML function that changes state."""


class ReadOnlyNvml:
    """pynvml with every state-changing function refused (by name), so this script cannot alter a GPU."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("nvml") and not _READS.match(name):
            raise WriteRefusedError(f"{name} changes GPU state; this check only reads")
        value = getattr(self._module, name)
        if callable(value) and name.startswith("nvml"):
            def call(*args: Any, **kwargs: Any) -> Any:
                self.calls.append(name)
                return value(*args, **kwargs)
            return call
        return value


def _text(value: Any) -> Any:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _struct(value: Any) -> Any:
    """A ctypes structure (or anything with fields) as a dict of plain values."""
    fields = getattr(value, "_fields_", None)
    if fields:
        return {f[0]: _text(getattr(value, f[0])) for f in fields if not f[0].startswith("_")}
    if hasattr(value, "__dict__"):
        return {k: _text(v) for k, v in vars(value).items() if not k.startswith("_")}
    return _text(value)


def _error(e: BaseException) -> dict[str, str]:
    return {"error": type(e).__name__, "message": str(e)}


def _try(out: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    try:
        value = fn()
    except WriteRefusedError:
        raise
    except Exception as e:  # NVML raises one class per return code; all are reported, none ends the check
        out[key] = _error(e)
        return None
    out[key] = value
    return value


def section_discovery() -> dict[str, Any]:
    from cc_gpu.host.discovery import discover  # noqa: PLC0415 - the check runs without it when it cannot import
    from cc_gpu.host.host import Host  # noqa: PLC0415

    inventory = discover(Host.real(), require_iommu=False)
    return {
        "iommufd": inventory.iommufd,
        "gpus": [{"bdf": g.bdf, "product": g.product_name, "architecture": g.architecture, "driver": g.driver,
                  "iommu_group": g.iommu_group, "cc_mode": g.cc_mode, "uuid": g.uuid, "vbios": g.vbios_version,
                  "driver_version": g.driver_version} for g in inventory.gpus],
    }


def section_versions(nv: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _try(out, "nvml_version", lambda: _text(nv.nvmlSystemGetNVMLVersion()))
    _try(out, "driver_version", lambda: _text(nv.nvmlSystemGetDriverVersion()))
    _try(out, "cuda_driver_version", nv.nvmlSystemGetCudaDriverVersion)
    count = _try(out, "device_count", nv.nvmlDeviceGetCount) or 0
    gpus = []
    for index in range(count):
        gpu: dict[str, Any] = {"index": index}
        handle = _try(gpu, "handle", lambda i=index: nv.nvmlDeviceGetHandleByIndex(i))
        gpu.pop("handle", None)
        if handle is not None:
            _try(gpu, "pci_bus_id", lambda h=handle: _text(nv.nvmlDeviceGetPciInfo(h).busId))
            _try(gpu, "name", lambda h=handle: _text(nv.nvmlDeviceGetName(h)))
            _try(gpu, "uuid", lambda h=handle: _text(nv.nvmlDeviceGetUUID(h)))
            _try(gpu, "vbios", lambda h=handle: _text(nv.nvmlDeviceGetVbiosVersion(h)))
            _try(gpu, "architecture", lambda h=handle: nv.nvmlDeviceGetArchitecture(h))
        gpus.append(gpu)
    out["gpus"] = gpus
    return out


def section_cc(nv: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _try(out, "state", lambda: _struct(nv.nvmlSystemGetConfComputeState()))
    _try(out, "settings", lambda: _struct(nv.nvmlSystemGetConfComputeSettings()))
    _try(out, "capabilities", lambda: _struct(nv.nvmlSystemGetConfComputeCapabilities()))
    _try(out, "gpus_ready_state", nv.nvmlSystemGetConfComputeGpusReadyState)
    state = out.get("state")
    out["cc_on"] = bool(isinstance(state, dict) and state.get("ccFeature"))
    return out


def section_evidence(nv: Any, bdfs: list[str], cc_on: bool) -> list[dict[str, Any]]:
    from cc_gpu.attest.ocsp import RevocationMode  # noqa: PLC0415
    from cc_gpu.attest.policy import Policy  # noqa: PLC0415
    from cc_gpu.attest.trust import TrustStore  # noqa: PLC0415
    from cc_gpu.attest.verifier import Verifier  # noqa: PLC0415

    results = []
    for bdf in bdfs:
        item: dict[str, Any] = {"bdf": bdf}
        nonce = os.urandom(32)
        item["nonce"] = nonce.hex()
        try:
            handle = nv.nvmlDeviceGetHandleByPciBusId(bdf)
            started = time.monotonic()
            report = nv.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
            certs = nv.nvmlDeviceGetConfComputeGpuCertificate(handle)
            item["seconds"] = round(time.monotonic() - started, 3)
        except WriteRefusedError:
            raise
        except Exception as e:
            item.update(_error(e))
            expected = not cc_on or any(k in type(e).__name__ for k in EXPECTED_EVIDENCE_ERRORS)
            item["outcome"] = "refused as expected (CC off)" if expected and not cc_on else (
                "refused" if expected else "failed")
            results.append(item)
            continue
        raw = bytes(report.attestationReport[: report.attestationReportSize])
        chain = bytes(certs.attestationCertChain[: certs.attestationCertChainSize])
        item["report_bytes"] = len(raw)
        item["chain_bytes"] = len(chain)
        verdict = Verifier(TrustStore.default()).verify(
            raw, chain, nonce, Policy(revocation=RevocationMode.OFF, missing_rim_fails=False), at=datetime.now(UTC))
        item["verdict"] = verdict.to_json()
        item["outcome"] = verdict.result_text
        results.append(item)
    return results


def run(nv_module: Any, out_dir: Path | None, bdfs: list[str] | None = None,
        discovery: Callable[[], dict[str, Any]] = section_discovery) -> int:
    nv = ReadOnlyNvml(nv_module)
    report: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "sections": {}}
    failed = []

    def record(name: str, fn: Callable[[], Any]) -> Any:
        try:
            value = fn()
        except WriteRefusedError:
            raise
        except Exception as e:
            report["sections"][name] = {**_error(e), "traceback": traceback.format_exc(limit=5)}
            failed.append(name)
            return None
        report["sections"][name] = value
        return value

    record("discovery", discovery)
    initialised = record("nvml_init", lambda: nv.nvmlInit() or True)
    try:
        versions = record("versions", lambda: section_versions(nv)) if initialised else None
        cc = record("cc", lambda: section_cc(nv)) if initialised else None
        targets = bdfs or [g["pci_bus_id"] for g in (versions or {}).get("gpus", []) if "pci_bus_id" in g]
        if initialised:
            record("evidence", lambda: section_evidence(nv, targets, bool(cc and cc.get("cc_on"))))
    finally:
        if initialised:
            record("nvml_shutdown", lambda: nv.nvmlShutdown() or True)
    report["nvml_calls"] = nv.calls
    report["failed_sections"] = failed
    text = json.dumps(report, indent=2, default=str)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "device-check.json").write_text(text + "\n")
    for name in report["sections"]:
        status = "FAILED" if name in failed else "ok"
        print(f"{status:6} {name}")
    for item in report["sections"].get("evidence") or []:
        print(f"       evidence {item['bdf']}: {item.get('outcome')} {item.get('error', '')}".rstrip())
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    parser.add_argument("--bdf", action="append", default=[], help="only these GPUs (PCI address); default: all")
    args = parser.parse_args(argv)
    import pynvml  # noqa: PLC0415 - nvidia-ml-py, a dependency of cc-gpu

    return run(pynvml, args.out, args.bdf or None)


if __name__ == "__main__":
    sys.exit(main())
