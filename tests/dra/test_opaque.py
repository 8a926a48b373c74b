"""Opaque device config: strict decoding, class-then-claim order, per-request selection, errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from cc_gpu.dra import opaque
from cc_gpu.dra.errors import OpaqueConfigError

DRIVER = "gpu.cc-gpu.io"


def params(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig", **fields}


def entry(source: str, parameters: Any, requests: list[str] | None = None, driver: str = DRIVER) -> dict[str, Any]:
    out: dict[str, Any] = {"source": source, "opaque": {"driver": driver, "parameters": parameters}}
    if requests is not None:
        out["requests"] = requests
    return out


@pytest.mark.parametrize(
    ("name", "config", "request_name", "want_mode", "want_reset"),
    [
        ("no config: defaults", [], "gpu", "auto", "auto"),
        ("class only", [entry("FromClass", params(iommuMode="legacy"))], "gpu", "legacy", "auto"),
        (
            "claim wins over class, whatever the list order",
            [entry("FromClaim", params(iommuMode="iommufd")), entry("FromClass", params(iommuMode="legacy"))],
            "gpu",
            "iommufd",
            "auto",
        ),
        (
            "fields merge: class sets one, claim another",
            [entry("FromClass", params(resetOnRelease="never")), entry("FromClaim", params(iommuMode="legacy"))],
            "gpu",
            "legacy",
            "never",
        ),
        (
            "entry for another request is skipped",
            [entry("FromClaim", params(iommuMode="legacy"), ["other"])],
            "gpu",
            "auto",
            "auto",
        ),
        (
            "entry for the parent request applies to a sub-request",
            [entry("FromClaim", params(iommuMode="legacy"), ["gpu"])],
            "gpu/h100",
            "legacy",
            "auto",
        ),
        (
            "other drivers' entries are skipped, even if malformed",
            [entry("FromClaim", {"garbage": True}, driver="gpu.nvidia.com")],
            "gpu",
            "auto",
            "auto",
        ),
    ],
)
def test_resolution(
    name: str, config: list[dict[str, Any]], request_name: str, want_mode: str, want_reset: str
) -> None:
    cfg = opaque.resolve(opaque.entries_for_driver(config, DRIVER), request_name)
    assert (cfg.iommu_mode, cfg.reset_on_release) == (want_mode, want_reset), name


@pytest.mark.parametrize(
    ("name", "parameters", "field_in_message"),
    [
        ("unknown field", params(iommuMod="legacy"), "iommuMod: unknown field"),
        ("bad enum value", params(iommuMode="vfio"), "iommuMode: must be one of"),
        ("wrong type", params(resetOnRelease=True), "resetOnRelease: must be one of"),
        ("wrong apiVersion", {"apiVersion": "cc-gpu.io/v9", "kind": "VfioDeviceConfig"}, "apiVersion"),
        ("wrong kind", {"apiVersion": "cc-gpu.io/v1alpha1", "kind": "GpuConfig"}, "kind: must be VfioDeviceConfig"),
        ("not an object", ["iommuMode"], "must be an object"),
        ("missing parameters", None, "must be an object"),
    ],
)
def test_strict_errors_name_the_field(name: str, parameters: Any, field_in_message: str) -> None:
    entries = opaque.entries_for_driver([entry("FromClaim", parameters)], DRIVER)
    with pytest.raises(OpaqueConfigError) as exc:
        opaque.resolve(entries, "gpu")
    assert field_in_message in str(exc.value), name
    assert "claim config[0].parameters" in str(exc.value)


def test_bad_source_is_an_error() -> None:
    with pytest.raises(OpaqueConfigError, match="source"):
        opaque.entries_for_driver([entry("FromSomewhere", params())], DRIVER)


def test_a_new_section_is_one_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    def decode_attestation(previous: Any, raw: Any, path: str, source: str) -> Any:
        if not isinstance(raw, dict) or set(raw) - {"policy"}:
            raise OpaqueConfigError(f"{path}: bad")
        return {**(previous or {}), **raw}

    monkeypatch.setitem(opaque.SECTIONS, "attestation", decode_attestation)
    entries = opaque.entries_for_driver([entry("FromClass", params(attestation={"policy": "strict"}))], DRIVER)
    assert opaque.resolve(entries, "gpu").extra == {"attestation": {"policy": "strict"}}
