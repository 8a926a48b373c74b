"""Where RIMs come from: explicit files, a local directory named by RIM id, or an HTTP mirror of NVIDIA's RIM service.

RIM ids follow NVIDIA's naming (`NV_GPU_DRIVER_GH100_<version>`, Blackwell `NV_GPU_CC_DRIVER_<CHIP_INFO>_<version>`,
`NV_GPU_VBIOS_<PROJECT>_<PROJECT_SKU>_<CHIP_SKU>_<VBIOS without dots, upper case>`), so a directory filled from
the RIM service, a bundle, or a mirror all answer the same questions. A source only delivers bytes; every RIM is
verified by the verifier, whatever its source. The mirror speaks the service's format: `GET <base>/<id>` returns JSON
whose `rim` member is the base64 of the XML. The network is reached only through the injected `HttpGet`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from cc_gpu.attest.errors import RimFetchError
from cc_gpu.attest.evidence import AttestationReport

NVIDIA_RIM_SERVICE = "https://rim.attestation.nvidia.com/v1/rim/"
_VBIOS_VERSION = re.compile(r"^[0-9A-Fa-f]{2}(\.[0-9A-Fa-f]{2}){4}$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
RIM_SUFFIXES = ("", ".swidtag", ".xml")


def driver_rim_id(report: AttestationReport, device_chip: str | None = None) -> str | None:
    """The driver RIM's id. Hopper: `NV_GPU_DRIVER_GH100_<version>`; later GPUs: `NV_GPU_CC_DRIVER_<chip>_<version>`,
    the chip from the report's CHIP_INFO or, for reports without it (early Blackwell drivers), from the verified
    device certificate's model (`GB100 A01 GSP BROM` -> GB100), as NVIDIA's verifier takes it from the architecture."""
    version = report.opaque.driver_version
    if not version:
        return None
    chip = report.opaque.chip_info or (device_chip if device_chip and device_chip != "GH100" else None)
    return f"NV_GPU_CC_DRIVER_{chip}_{version}" if chip else f"NV_GPU_DRIVER_GH100_{version}"


def vbios_rim_id(report: AttestationReport) -> str | None:
    o = report.opaque
    if not (o.project and o.project_sku and o.chip_sku and o.vbios_version):
        return None
    return f"NV_GPU_VBIOS_{o.project}_{o.project_sku}_{o.chip_sku}_{o.vbios_version.replace('.', '').upper()}"


def is_vbios_version(version: str) -> bool:
    """VBIOS versions are five dot-separated hex byte pairs; driver versions are decimal."""
    return bool(_VBIOS_VERSION.match(version))


class RimSource(Protocol):
    def fetch(self, rim_id: str) -> bytes | None:
        """The RIM's bytes, or None when this source does not have it; RimFetchError when it cannot tell."""
        ...


class HttpGet(Protocol):
    """GET a URL; returns (status, body). The only network effect of the mirror source."""

    def get(self, url: str, timeout: float) -> tuple[int, bytes]: ...


def _checked_id(rim_id: str) -> str:
    if not _SAFE_ID.match(rim_id) or rim_id.startswith("."):
        raise RimFetchError(f"refusing RIM id {rim_id!r} (unexpected characters)")
    return rim_id


class DirectoryRimSource:
    """`<dir>/<RIM id>` with an optional `.swidtag` or `.xml` suffix."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fetch(self, rim_id: str) -> bytes | None:
        name = _checked_id(rim_id)
        for suffix in RIM_SUFFIXES:
            candidate = self.path / f"{name}{suffix}"
            try:
                return candidate.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                continue
            except OSError as e:
                raise RimFetchError(f"cannot read {candidate}: {e}") from e
        return None


class HttpRimSource:
    """A mirror compatible with NVIDIA's RIM service."""

    def __init__(self, transport: HttpGet, base_url: str = NVIDIA_RIM_SERVICE, timeout: float = 10.0) -> None:
        self.transport = transport
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout = timeout

    def fetch(self, rim_id: str) -> bytes | None:
        status, body = self.transport.get(self.base_url + _checked_id(rim_id), self.timeout)
        if status == 404:
            return None
        if status != 200:
            raise RimFetchError(f"RIM service answered HTTP {status} for {rim_id}")
        try:
            doc = json.loads(body)
            return base64.b64decode(doc["rim"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            raise RimFetchError(f"RIM service reply for {rim_id} is not the expected JSON: {e}") from e


class ChainedRimSource:
    """Asks each source in turn; the first that has the RIM wins."""

    def __init__(self, sources: Iterable[RimSource]) -> None:
        self.sources: Sequence[RimSource] = tuple(sources)

    def fetch(self, rim_id: str) -> bytes | None:
        for source in self.sources:
            found = source.fetch(rim_id)
            if found is not None:
                return found
        return None
