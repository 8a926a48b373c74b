"""Strict decoding of the driver's opaque device configuration (`cc-gpu.io/v1alpha1`, kind `VfioDeviceConfig`).

Admins put this in a DeviceClass's `config[].opaque.parameters`, users in a ResourceClaim's. The allocation lists
both; class entries apply first, then claim entries, and a later entry overrides field by field. Decoding is strict:
an unknown field, a wrong type or a value outside its set is an error for that claim whose message names the field.
Security policy (allowed handlers, CC mode) is not here: it is the node admin's, in the plugin's own configuration,
out of reach of claim authors. Sections are decoded by small functions in `SECTIONS`; a new section (for example an
`attestation` block) is one more entry there and one more field on `VfioDeviceConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cc_gpu.dra import attestcfg
from cc_gpu.dra.errors import OpaqueConfigError

API_GROUP = "cc-gpu.io"
API_VERSIONS = ("v1alpha1",)
KIND = "VfioDeviceConfig"
IOMMU_MODES = ("auto", "legacy", "iommufd")
RESET_MODES = ("auto", "never")


@dataclass(frozen=True)
class VfioDeviceConfig:
    """The effective configuration for the devices of one request of one claim."""

    # Which /dev/vfio nodes go into the CDI spec. `auto`: the iommufd cdev for a pod of a confidential handler (Kata
    # >= 3.26 refuses the legacy group node there; a node without iommufd refuses the claim), otherwise the legacy
    # group node where `/dev/vfio/vfio` exists, else the cdev. See `iommu.py`.
    iommu_mode: str = "auto"
    reset_on_release: str = "auto"  # reset the function at unprepare when the kernel offers a reset method
    extra: Mapping[str, Any] = field(default_factory=dict)  # decoded later sections, keyed by section name


def _enum(path: str, value: object, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise OpaqueConfigError(f"{path}: must be one of {', '.join(allowed)} (got {value!r})")
    return value


def _decode_top(params: Mapping[str, Any], base: VfioDeviceConfig, where: str) -> VfioDeviceConfig:
    """Apply the top-level scalar fields present in `params` over `base`."""
    cfg = base
    if "iommuMode" in params:
        cfg = replace(cfg, iommu_mode=_enum(f"{where}.iommuMode", params["iommuMode"], IOMMU_MODES))
    if "resetOnRelease" in params:
        cfg = replace(cfg, reset_on_release=_enum(f"{where}.resetOnRelease", params["resetOnRelease"], RESET_MODES))
    return cfg


TOP_FIELDS = frozenset({"apiVersion", "kind", "iommuMode", "resetOnRelease"})

# section name -> decoder(previous decoded value or None, raw value, path, source) -> decoded value; `source` is
# FromClass or FromClaim, so a section can keep what the admin said apart from what a claim asks for
SectionDecoder = Callable[[Any, Any, str, str], Any]
SECTIONS: dict[str, SectionDecoder] = {attestcfg.SECTION: attestcfg.decode_section}


def decode_one(
    params: object, base: VfioDeviceConfig, where: str = "parameters", source: str = "FromClaim"
) -> VfioDeviceConfig:
    """Decode one opaque parameters object strictly and apply it over `base`."""
    if not isinstance(params, Mapping):
        raise OpaqueConfigError(f"{where}: must be an object (got {type(params).__name__})")
    api_version = params.get("apiVersion")
    expected = [f"{API_GROUP}/{v}" for v in API_VERSIONS]
    if api_version not in expected:
        raise OpaqueConfigError(f"{where}.apiVersion: must be one of {', '.join(expected)} (got {api_version!r})")
    if params.get("kind") != KIND:
        raise OpaqueConfigError(f"{where}.kind: must be {KIND} (got {params.get('kind')!r})")
    unknown = sorted(set(params) - TOP_FIELDS - set(SECTIONS))
    if unknown:
        raise OpaqueConfigError(f"{where}.{unknown[0]}: unknown field")
    cfg = _decode_top(params, base, where)
    extra = dict(cfg.extra)
    for name, decoder in SECTIONS.items():
        if name in params:
            extra[name] = decoder(extra.get(name), params[name], f"{where}.{name}", source)
    return replace(cfg, extra=extra)


@dataclass(frozen=True)
class ConfigEntry:
    """One `status.allocation.devices.config[]` entry, reduced to what matters here."""

    source: str  # FromClass | FromClaim
    requests: tuple[str, ...]  # empty: applies to every request
    parameters: object


def entries_for_driver(allocation_config: Sequence[Mapping[str, Any]], driver: str) -> list[ConfigEntry]:
    """Select this driver's opaque entries from an allocation's config list, keeping their order."""
    out: list[ConfigEntry] = []
    for i, raw in enumerate(allocation_config):
        opaque = raw.get("opaque") or {}
        if opaque.get("driver") != driver:
            continue
        source = raw.get("source", "FromClaim")
        if source not in ("FromClass", "FromClaim"):
            raise OpaqueConfigError(f"config[{i}].source: must be FromClass or FromClaim (got {source!r})")
        out.append(ConfigEntry(source, tuple(raw.get("requests") or ()), opaque.get("parameters")))
    return out


def _applies(entry: ConfigEntry, request: str) -> bool:
    parent = request.split("/", 1)[0]
    return not entry.requests or request in entry.requests or parent in entry.requests


def resolve(entries: Sequence[ConfigEntry], request: str) -> VfioDeviceConfig:
    """The effective config for `request`: class entries first, then claim entries, each in order, later wins."""
    cfg = VfioDeviceConfig()
    ordered = [e for e in entries if e.source == "FromClass"] + [e for e in entries if e.source == "FromClaim"]
    for index, entry in enumerate(ordered):
        if _applies(entry, request):
            where = f"{'class' if entry.source == 'FromClass' else 'claim'} config[{index}].parameters"
            cfg = decode_one(entry.parameters, cfg, where, entry.source)
    return cfg
