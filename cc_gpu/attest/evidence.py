"""Decode a GPU attestation report: the SPDM 1.1 GET_MEASUREMENTS request followed by its signed response.

This is a pure function of bytes. Every read goes through a bounds-checked cursor, so malformed input of any kind
surfaces as `EvidenceParseError` naming the field and the absolute byte offset, never as an IndexError or a
struct.error. Layout (all lengths little-endian):

    request   [0] version 0x11  [1] code 0xE0  [2] param1  [3] param2  [4:36] nonce  [36] slot id
    response  [0] version 0x11  [1] code 0x60  [2] param1  [3] param2  [4] number of blocks  [5:8] record length L1
              record (L1 bytes: blocks of index u8, spec u8, size u16, then DMTF type u8, value size u16, value)
              responder nonce (32)  opaque length L2 (u16)  opaque data (L2 bytes of TLVs)  signature (96, r||s)

Opaque data comes in two formats, told apart by the first bytes, as NVIDIA's verifier (NVAT) does:

    legacy  entries [u16 type][u16 length][value], from the first byte (drivers before CUDA 13.5)
    NVDAOD  header "NVDAOD" [u16 profile][u8 major][u8 minor][u16 reserved], 12 bytes, then entries
            [u16 type][u16 value type][u16 length][value]

Only profile 0 is defined; a header major beyond `MAX_OPAQUE_MAJOR` is refused (`UnsupportedOpaqueFormatError`)
rather than read with rules it may have changed. In the NVDAOD format the header's major is the opaque-data
version (NVAT ignores a legacy OPAQUE_DATA_VERSION entry beside it); in the legacy format that entry is.

Opaque-data entries of a type this parser does not know are kept (they are covered by the signature) and reported by
number; a duplicated type is an error because a relying party could otherwise be shown two different values.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cc_gpu.attest.errors import EvidenceParseError, UnsupportedOpaqueFormatError

SPDM_VERSION_1_1 = 0x11
REQUEST_CODE_GET_MEASUREMENTS = 0xE0
RESPONSE_CODE_MEASUREMENTS = 0x60
REQUEST_LENGTH = 37
NONCE_LENGTH = 32
SIGNATURE_LENGTH = 96
DIGEST_LENGTH = 48
DMTF_SPEC = 0x01
RAW_BIT_STREAM = 0x80

# Opaque-data TLV types (NVIDIA's numbering).
OPAQUE_TYPES: Mapping[int, str] = MappingProxyType(
    {
        1: "CERT_ISSUER_NAME",
        2: "CERT_AUTHORITY_KEY_IDENTIFIER",
        3: "DRIVER_VERSION",
        4: "GPU_INFO",
        5: "SKU",
        6: "VBIOS_VERSION",
        7: "MANUFACTURER_ID",
        8: "TAMPER_DETECTION",
        9: "SMC",
        10: "VPR",
        11: "NVDEC0_STATUS",
        12: "MSRSCNT",
        13: "CPRINFO",
        14: "BOARD_ID",
        15: "CHIP_SKU",
        16: "CHIP_SKU_MOD",
        17: "PROJECT",
        18: "PROJECT_SKU",
        19: "PROJECT_SKU_MOD",
        20: "FWID",
        21: "PROTECTED_PCIE_STATUS",
        22: "SWITCH_PDI",
        23: "FLOORSWEPT_PORTS",
        24: "POSITION_ID",
        25: "LOCK_SWITCH_STATUS",
        32: "GPU_LINK_CONN",
        33: "SYS_ENABLE_STATUS",
        34: "OPAQUE_DATA_VERSION",
        35: "CHIP_INFO",
        36: "FEATURE_FLAG",
        255: "INVALID",
    }
)
_TYPE_BY_NAME = {name: number for number, name in OPAQUE_TYPES.items()}

NVDEC0_ENABLED = 0xAA
NVDEC0_DISABLED = 0x55
FEATURE_FLAGS = MappingProxyType({0: "SPT", 1: "MPT", 2: "PPCIE"})


class _Cursor:
    """Bounds-checked little-endian reader over a byte string; every failure names the field and offset."""

    def __init__(self, data: bytes, base: int = 0) -> None:
        self.data = data
        self.pos = 0
        self.base = base

    def take(self, n: int, name: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise EvidenceParseError(name, self.base + self.pos, f"needs {n} bytes, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self, name: str) -> int:
        return self.take(1, name)[0]

    def u16(self, name: str) -> int:
        return int.from_bytes(self.take(2, name), "little")

    def u24(self, name: str) -> int:
        return int.from_bytes(self.take(3, name), "little")

    @property
    def offset(self) -> int:
        return self.base + self.pos


@dataclass(frozen=True)
class MeasurementBlock:
    """One SPDM measurement block: `index` is the SPDM index (1-based); the RIM index is `index - 1`."""

    index: int
    value_type: int
    digest: bytes


NVDAOD_MAGIC = b"NVDAOD"
NVDAOD_HEADER_LENGTH = 12
NVDAOD_PROFILE = 0
MAX_OPAQUE_MAJOR = 2


@dataclass(frozen=True)
class OpaqueFormat:
    """Which opaque-data format the report used: legacy TLVs, or an NVDAOD header (profile, major, minor)."""

    nvdaod: bool = False
    profile: int = 0
    major: int = 0
    minor: int = 0


@dataclass(frozen=True)
class OpaqueData:
    """The opaque-data TLVs of the response, by type number, plus decoded views of the ones policy needs."""

    fields: Mapping[int, bytes]
    format: OpaqueFormat = OpaqueFormat()
    value_types: Mapping[int, int] = field(default_factory=dict)  # NVDAOD only: each entry's value type

    def get(self, name: str) -> bytes | None:
        return self.fields.get(_TYPE_BY_NAME[name])

    @property
    def unknown_types(self) -> tuple[int, ...]:
        return tuple(sorted(t for t in self.fields if t not in OPAQUE_TYPES))

    @property
    def driver_version(self) -> str | None:
        raw = self.get("DRIVER_VERSION")
        return None if raw is None else raw.split(b"\0", 1)[0].decode("ascii", "replace")

    @property
    def vbios_version(self) -> str | None:
        raw = self.get("VBIOS_VERSION")
        if raw is None or len(raw) < 5:
            return None
        return ".".join(f"{b:02X}" for b in (raw[3], raw[2], raw[1], raw[0], raw[4]))

    def _text(self, name: str) -> str | None:
        raw = self.get(name)
        return None if raw is None else raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()

    @property
    def project(self) -> str | None:
        return self._text("PROJECT")

    @property
    def project_sku(self) -> str | None:
        return self._text("PROJECT_SKU")

    @property
    def chip_sku(self) -> str | None:
        return self._text("CHIP_SKU")

    @property
    def chip_info(self) -> str | None:
        return self._text("CHIP_INFO")

    @property
    def fwid(self) -> bytes | None:
        return self.get("FWID")

    @property
    def nvdec0_status(self) -> int | None:
        raw = self.get("NVDEC0_STATUS")
        return None if not raw else raw[0]

    @property
    def feature_flag(self) -> str | None:
        raw = self.get("FEATURE_FLAG")
        if not raw:
            return None
        value = int.from_bytes(raw[:4], "little")
        return FEATURE_FLAGS.get(value, f"unknown({value})")

    @property
    def opaque_data_version(self) -> int | None:
        """The NVDAOD header's major, else the legacy OPAQUE_DATA_VERSION entry (None when neither is present)."""
        if self.format.nvdaod:
            return self.format.major
        raw = self.get("OPAQUE_DATA_VERSION")
        return None if not raw else int.from_bytes(raw[:8], "little")

    @property
    def gpu_mode(self) -> str | None:
        """NVIDIA's `x-nvidia-gpu-mode` (spt | mpt | ppcie), as its verifier derives it: only from opaque data of
        version 1 or later that carries the feature flag; None when the evidence does not say."""
        version = self.opaque_data_version
        if version is None or version < 1 or self.feature_flag is None:
            return None
        return self.feature_flag.lower()

    @property
    def msrscnt(self) -> tuple[int, ...]:
        raw = self.get("MSRSCNT") or b""
        return tuple(int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw) - len(raw) % 4, 4))

    def describe(self) -> dict[str, object]:
        """Decoded, JSON-friendly view for `cc-gpu attest inspect`."""
        out: dict[str, object] = {
            "driver_version": self.driver_version,
            "vbios_version": self.vbios_version,
            "project": self.project,
            "project_sku": self.project_sku,
            "chip_sku": self.chip_sku,
            "chip_info": self.chip_info,
            "fwid": None if self.fwid is None else self.fwid.hex(),
            "nvdec0_status": {None: None, NVDEC0_ENABLED: "enabled", NVDEC0_DISABLED: "disabled"}.get(
                self.nvdec0_status, f"unknown(0x{self.nvdec0_status or 0:02x})"
            ),
            "feature_flag": self.feature_flag,
            "format": (f"NVDAOD profile {self.format.profile} version {self.format.major}.{self.format.minor}"
                       if self.format.nvdaod else "legacy"),
        }
        out["tlvs"] = {OPAQUE_TYPES.get(t, f"UNKNOWN_{t}"): v.hex() for t, v in sorted(self.fields.items())}
        return out


@dataclass(frozen=True)
class AttestationReport:
    """A decoded report. `raw` is the exact input; `signed_bytes` is what the signature covers."""

    raw: bytes
    nonce: bytes
    slot_id: int
    request_param1: int
    request_param2: int
    response_param1: int
    response_param2: int
    measurements: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque: OpaqueData
    signature: bytes = field(repr=False)

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:-SIGNATURE_LENGTH]

    def measurement(self, rim_index: int) -> bytes | None:
        """The runtime digest for a RIM (0-based) index, or None when the report has no such block."""
        for block in self.measurements:
            if block.index == rim_index + 1:
                return block.digest
        return None


def decode_report_text(text: str | bytes) -> bytes:
    """Turn the hex text NVML tools write (whitespace allowed) into bytes; raw bytes pass through unchanged."""
    if isinstance(text, bytes):
        stripped = text.strip()
        if not stripped or stripped.translate(None, b"0123456789abcdefABCDEF \t\r\n"):
            return text  # not hex text: raw report bytes
        text = stripped.decode("ascii")
    compact = "".join(text.split())
    if len(compact) % 2:
        raise EvidenceParseError("hex text", len(compact) // 2, "odd number of hex digits")
    try:
        return binascii.unhexlify(compact)
    except (binascii.Error, ValueError) as e:
        raise EvidenceParseError("hex text", 0, f"not hexadecimal: {e}") from e


def parse_report(data: bytes) -> AttestationReport:
    """Parse a request+response blob. Raises `EvidenceParseError` for anything that is not exactly one report."""
    cur = _Cursor(data)
    if cur.u8("request.SPDMVersion") != SPDM_VERSION_1_1:
        raise EvidenceParseError("request.SPDMVersion", 0, "only SPDM 1.1 (0x11) is supported")
    if cur.u8("request.RequestResponseCode") != REQUEST_CODE_GET_MEASUREMENTS:
        raise EvidenceParseError("request.RequestResponseCode", 1, "not GET_MEASUREMENTS (0xE0)")
    req_p1 = cur.u8("request.Param1")
    req_p2 = cur.u8("request.Param2")
    nonce = cur.take(NONCE_LENGTH, "request.Nonce")
    slot = cur.u8("request.SlotID")

    start = cur.offset
    if cur.u8("response.SPDMVersion") != SPDM_VERSION_1_1:
        raise EvidenceParseError("response.SPDMVersion", start, "only SPDM 1.1 (0x11) is supported")
    if cur.u8("response.RequestResponseCode") != RESPONSE_CODE_MEASUREMENTS:
        raise EvidenceParseError("response.RequestResponseCode", start + 1, "not MEASUREMENTS (0x60)")
    resp_p1 = cur.u8("response.Param1")
    resp_p2 = cur.u8("response.Param2")
    count = cur.u8("response.NumberOfBlocks")
    record_len = cur.u24("response.MeasurementRecordLength")
    record_base = cur.offset
    record = cur.take(record_len, "response.MeasurementRecord")
    blocks = _parse_record(record, count, record_base)
    responder_nonce = cur.take(NONCE_LENGTH, "response.Nonce")
    opaque_len = cur.u16("response.OpaqueLength")
    opaque_base = cur.offset
    opaque = _parse_opaque(cur.take(opaque_len, "response.OpaqueData"), opaque_base)
    signature = cur.take(SIGNATURE_LENGTH, "response.Signature")
    if cur.pos != len(data):
        raise EvidenceParseError("trailing data", cur.offset, f"{len(data) - cur.pos} bytes after the signature")
    return AttestationReport(
        raw=bytes(data),
        nonce=nonce,
        slot_id=slot,
        request_param1=req_p1,
        request_param2=req_p2,
        response_param1=resp_p1,
        response_param2=resp_p2,
        measurements=blocks,
        responder_nonce=responder_nonce,
        opaque=opaque,
        signature=signature,
    )


_BLOCK = struct.Struct("<BBHBH")  # index, spec, size, DMTF value type, value size


def _parse_record(record: bytes, count: int, base: int) -> tuple[MeasurementBlock, ...]:
    # Fast path for the well-formed case (64 blocks per report, checked on every verification); anything unusual
    # falls through to the field-by-field parser below, which names the field and offset of the problem.
    blocks_fast: list[MeasurementBlock] = []
    pos = 0
    seen_fast: set[int] = set()
    for _ in range(count):
        if pos + 7 > len(record):
            break
        index, spec, size, value_type, value_size = _BLOCK.unpack_from(record, pos)
        if index == 0 or index in seen_fast or spec != DMTF_SPEC or size != 51 or value_size != DIGEST_LENGTH:
            break
        if pos + 4 + size > len(record):
            break
        seen_fast.add(index)
        blocks_fast.append(MeasurementBlock(index, value_type, record[pos + 7 : pos + 4 + size]))
        pos += 4 + size
    else:
        if pos == len(record):
            return tuple(blocks_fast)
    return _parse_record_checked(record, count, base)


def _parse_record_checked(record: bytes, count: int, base: int) -> tuple[MeasurementBlock, ...]:
    cur = _Cursor(record, base)
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    for n in range(count):
        at = cur.offset
        index = cur.u8(f"measurement[{n}].Index")
        if index == 0 or index in seen:
            raise EvidenceParseError(f"measurement[{n}].Index", at, f"index {index} is zero or repeated")
        seen.add(index)
        spec = cur.u8(f"measurement[{n}].MeasurementSpecification")
        if spec != DMTF_SPEC:
            raise EvidenceParseError(f"measurement[{n}].MeasurementSpecification", at + 1, f"0x{spec:02x} is not DMTF")
        size = cur.u16(f"measurement[{n}].MeasurementSize")
        body = _Cursor(cur.take(size, f"measurement[{n}].Measurement"), at + 4)
        value_type = body.u8(f"measurement[{n}].DMTFSpecMeasurementValueType")
        value_size = body.u16(f"measurement[{n}].DMTFSpecMeasurementValueSize")
        # DMTF value type bit 7: a raw bit stream (newer GPUs report configuration values and a manifest this way,
        # of any size); otherwise a digest, which must be SHA-384.
        if not value_type & RAW_BIT_STREAM and value_size != DIGEST_LENGTH:
            raise EvidenceParseError(
                f"measurement[{n}].DMTFSpecMeasurementValueSize", at + 5, f"{value_size}, expected 48 (SHA-384)"
            )
        digest = body.take(value_size, f"measurement[{n}].DMTFSpecMeasurementValue")
        if body.pos != size:
            raise EvidenceParseError(f"measurement[{n}].Measurement", body.offset, "size disagrees with value size")
        blocks.append(MeasurementBlock(index=index, value_type=value_type, digest=digest))
    if cur.pos != len(record):
        raise EvidenceParseError("response.MeasurementRecord", cur.offset, "record length disagrees with block count")
    return tuple(blocks)


def _parse_opaque(data: bytes, base: int) -> OpaqueData:
    cur = _Cursor(data, base)
    fmt = OpaqueFormat()
    if data.startswith(NVDAOD_MAGIC):
        fmt = _parse_nvdaod_header(cur)
    fields: dict[int, bytes] = {}
    value_types: dict[int, int] = {}
    while cur.pos < len(data):
        at = cur.offset
        kind = cur.u16("opaque.Type")
        name = OPAQUE_TYPES.get(kind, kind)
        if fmt.nvdaod:
            value_types[kind] = cur.u16(f"opaque[{name}].ValueType")
        length = cur.u16(f"opaque[{name}].Length")
        value = cur.take(length, f"opaque[{name}].Value")
        if kind in fields:
            raise EvidenceParseError(f"opaque[{name}]", at, "type appears twice")
        fields[kind] = value
    fwid = fields.get(_TYPE_BY_NAME["FWID"])
    if fwid is not None and len(fwid) != DIGEST_LENGTH:
        raise EvidenceParseError("opaque[FWID]", base, f"{len(fwid)} bytes, expected 48")
    return OpaqueData(fields=MappingProxyType(fields), format=fmt, value_types=MappingProxyType(value_types))


def _parse_nvdaod_header(cur: _Cursor) -> OpaqueFormat:
    at = cur.offset
    cur.take(len(NVDAOD_MAGIC), "opaque.Header.Magic")
    profile = cur.u16("opaque.Header.Profile")
    major = cur.u8("opaque.Header.Major")
    minor = cur.u8("opaque.Header.Minor")
    cur.u16("opaque.Header.Reserved")
    if profile != NVDAOD_PROFILE:
        raise UnsupportedOpaqueFormatError("opaque.Header.Profile", at + 6, f"NVDAOD profile {profile} is not 0")
    if major > MAX_OPAQUE_MAJOR:
        raise UnsupportedOpaqueFormatError(
            "opaque.Header.Major", at + 8, f"NVDAOD version {major}.{minor} is newer than this verifier knows "
            f"(up to {MAX_OPAQUE_MAJOR})"
        )
    return OpaqueFormat(True, profile, major, minor)
