"""The default trust store: NVIDIA's published roots, byte for byte, and never a simulated root."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from cc_gpu.attest.errors import TrustStoreError
from cc_gpu.attest.sim import SimulatedCa
from cc_gpu.attest.trust import DEVICE_ROOT_FILE, RIM_ROOT_FILE, SHIPPED_FINGERPRINTS, TrustStore

PACKAGED = resources.files("cc_gpu.attest.roots")
DOC = Path(__file__).resolve().parents[2] / "cc_gpu" / "attest" / "roots" / "README.md"
WHEEL_NAMES = {DEVICE_ROOT_FILE: "verifier_device_root.pem", RIM_ROOT_FILE: "verifier_RIM_root.pem"}


@pytest.mark.parametrize("name", [DEVICE_ROOT_FILE, RIM_ROOT_FILE])
def test_shipped_roots_match_documented_fingerprints(name: str) -> None:
    digest = hashlib.sha256(PACKAGED.joinpath(name).read_bytes()).hexdigest()
    assert digest == SHIPPED_FINGERPRINTS[name]
    row = next(line for line in DOC.read_text().splitlines() if f"`{name}`" in line)
    assert re.search(rf"`{digest}`", row), "README fingerprint differs from the file"


@pytest.mark.parametrize("name", [DEVICE_ROOT_FILE, RIM_ROOT_FILE])
def test_shipped_roots_are_byte_identical_to_the_published_wheel(name: str, nvidia_certs: Path) -> None:
    assert PACKAGED.joinpath(name).read_bytes() == (nvidia_certs / WHEEL_NAMES[name]).read_bytes()


def test_default_store_subjects() -> None:
    store = TrustStore.default()
    assert [c.subject.rfc4514_string() for c in store.device_roots] == ["O=NVIDIA,CN=NVIDIA Device Identity CA"]
    assert [c.subject.rfc4514_string() for c in store.rim_roots] == ["CN=NVIDIA CoRIM signing Root CA,O=NVIDIA,C=US"]


def test_production_store_refuses_simulated_roots(sim_ca: SimulatedCa) -> None:
    default = TrustStore.default()
    with pytest.raises(TrustStoreError, match="simulated"):
        TrustStore.of([*default.device_roots, sim_ca.device_root.cert], default.rim_roots, allow_simulated=False)
    with pytest.raises(TrustStoreError, match="simulated"):
        TrustStore(default.device_roots, (sim_ca.rim_root.cert,))
    assert sim_ca.trust_store().allow_simulated


def test_directory_store_refuses_simulated_roots(tmp_path: Path, sim_ca: SimulatedCa) -> None:
    (tmp_path / "device").mkdir()
    (tmp_path / "rim").mkdir()
    (tmp_path / "device" / "root.pem").write_bytes(sim_ca.device_root.cert.public_bytes(Encoding.PEM))
    (tmp_path / "rim" / "root.pem").write_bytes(PACKAGED.joinpath(RIM_ROOT_FILE).read_bytes())
    with pytest.raises(TrustStoreError, match="simulated"):
        TrustStore.from_directory(tmp_path)


def test_directory_store_loads_admin_roots(tmp_path: Path) -> None:
    (tmp_path / "device").mkdir()
    (tmp_path / "rim").mkdir()
    (tmp_path / "device" / "a.pem").write_bytes(PACKAGED.joinpath(DEVICE_ROOT_FILE).read_bytes())
    (tmp_path / "rim" / "b.pem").write_bytes(PACKAGED.joinpath(RIM_ROOT_FILE).read_bytes())
    assert TrustStore.from_directory(tmp_path).fingerprint() == TrustStore.default().fingerprint()


@pytest.mark.parametrize("case", ["missing-dir", "not-pem", "empty"])
def test_bad_store_directories_raise_typed_errors(case: str, tmp_path: Path) -> None:
    if case != "missing-dir":
        (tmp_path / "device").mkdir()
        (tmp_path / "rim").mkdir()
    if case == "not-pem":
        (tmp_path / "device" / "x.pem").write_text("garbage")
    with pytest.raises(TrustStoreError):
        TrustStore.from_directory(tmp_path)


def test_simulated_ca_keys_are_fresh_each_time() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    a, b = SimulatedCa.create(now), SimulatedCa.create(now)
    assert a.device_root.cert.public_key() != b.device_root.cert.public_key()
