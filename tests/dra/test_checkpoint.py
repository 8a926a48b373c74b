"""The checkpoint: round trip, checksum over the bytes as written, refusal of corrupt or unknown versions, atomicity."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cc_gpu.dra.checkpoint import (
    PREPARE_COMPLETED,
    PREPARE_STARTED,
    Checkpoint,
    ClaimEntry,
    PreparedDevice,
    decode,
    encode,
)
from cc_gpu.dra.errors import CheckpointCorruptError

ENTRY = ClaimEntry(
    uid="u1", namespace="ns", name="c", state=PREPARE_COMPLETED, boot_id="b1",
    devices=(PreparedDevice("gpu", "node", "gpu-0000-3b-00-0", 14, ("0000:3b:00.0",), {"0000:3b:00.0": "nvidia"},
                            ("/dev/vfio/14",), ("cc-gpu.io/vfio=u1-gpu-0000-3b-00-0",)),),
)


def test_round_trip(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path)
    cp.put(ENTRY)
    cp.put(ClaimEntry("u2", "ns", "d", PREPARE_STARTED, "b1"))
    assert Checkpoint(tmp_path).read() == {"u1": ENTRY, "u2": ClaimEntry("u2", "ns", "d", PREPARE_STARTED, "b1")}
    cp.drop("u2")
    cp.drop("unknown")
    assert set(cp.read()) == {"u1"}
    assert (tmp_path / "checkpoint.json").stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _tamper(raw: bytes, change: str) -> bytes:
    envelope = json.loads(raw)
    if change == "data":
        envelope["data"] = envelope["data"].replace("nvidia", "nouveau")
    elif change == "version":
        envelope["version"] = "v0"
    elif change == "checksum":
        envelope["checksum"] = "0" * 64
    return json.dumps(envelope).encode()


@pytest.mark.parametrize(
    ("name", "mutate", "message"),
    [
        ("data changed under the checksum", lambda raw: _tamper(raw, "data"), "checksum mismatch"),
        ("checksum changed", lambda raw: _tamper(raw, "checksum"), "checksum mismatch"),
        ("unknown version", lambda raw: _tamper(raw, "version"), "version 'v0' is not supported"),
        ("truncated file", lambda raw: raw[: len(raw) // 2], "not JSON"),
        ("not an object", lambda raw: b"[1, 2]", "not supported"),
    ],
)
def test_corruption_is_detected(name: str, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CheckpointCorruptError) as exc:
        decode(mutate(encode({"u1": ENTRY})))
    assert message in str(exc.value), name


def test_fields_added_by_a_later_version_are_ignored() -> None:
    envelope = json.loads(encode({"u1": ENTRY}))
    data = json.loads(envelope["data"])
    data["claims"]["u1"]["future_field"] = 1
    data["claims"]["u1"]["devices"][0]["future_device_field"] = "x"
    text = json.dumps(data)
    envelope.update(data=text, checksum=hashlib.sha256(text.encode()).hexdigest())
    assert decode(json.dumps(envelope).encode()) == {"u1": ENTRY}


def test_corrupt_file_fails_closed(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").write_text("{}")
    with pytest.raises(CheckpointCorruptError):
        Checkpoint(tmp_path).read()
