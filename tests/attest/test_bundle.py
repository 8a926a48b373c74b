"""Offline bundles for air-gapped clusters: import verifies and re-keys; the imported store serves cached mode."""

from __future__ import annotations

from pathlib import Path

from cc_gpu.attest.bundle import import_bundle
from cc_gpu.attest.ocsp import DirectoryOcspStore, RevocationChecker, RevocationMode
from cc_gpu.attest.policy import Policy
from cc_gpu.attest.sim import SimulatedCa
from cc_gpu.attest.sources import DirectoryRimSource
from cc_gpu.attest.verifier import Verifier
from tests.attest.conftest import SIM_NOW

NONCE = bytes(32)


def test_bundle_fetched_elsewhere_serves_an_air_gapped_verifier(tmp_path: Path) -> None:
    ca = SimulatedCa.create(SIM_NOW)
    gpu = ca.gpu("GPU-air")
    ev = gpu.evidence(NONCE)
    bundle, store = tmp_path / "bundle", tmp_path / "store"
    # On a connected machine: collect RIMs and OCSP responses.
    (bundle / "rims").mkdir(parents=True)
    for rim_id, content in ev.rims.items():
        (bundle / "rims" / f"{rim_id}.swidtag").write_bytes(content)
    (bundle / "rims" / "NV_GPU_DRIVER_GH100_0.1.swidtag").write_bytes(b"<not-a-rim/>")
    online = RevocationChecker(store=DirectoryOcspStore(bundle / "ocsp"), transport=ca.ocsp_responder())
    assert (
        Verifier(ca.trust_store(), revocation=online)
        .verify(ev.report, ev.cert_chain_pem, NONCE, Policy(), at=SIM_NOW, rims=list(ev.rims.values()))
        .ok
    )
    for n, path in enumerate(sorted((bundle / "ocsp").glob("*.der"))):
        path.rename(path.with_name(f"response-{n}.der"))  # names in a bundle do not matter
    (bundle / "ocsp" / "junk.der").write_bytes(b"junk")

    result = import_bundle(bundle, store, ca.trust_store(), SIM_NOW)
    assert sorted(result.rims) == sorted(ev.rims)
    assert len(result.ocsp) == 6
    assert sorted(Path(p).name for p, _ in result.rejected) == ["NV_GPU_DRIVER_GH100_0.1.swidtag", "junk.der"]

    # In the air-gapped cluster: no transport, RIMs and OCSP answers from the store.
    offline = Verifier(
        ca.trust_store(),
        rim_source=DirectoryRimSource(store / "rims"),
        revocation=RevocationChecker(store=DirectoryOcspStore(store / "ocsp")),
    )
    verdict = offline.verify(ev.report, ev.cert_chain_pem, NONCE, Policy(revocation=RevocationMode.CACHED), at=SIM_NOW)
    assert verdict.ok, verdict.failed
    assert verdict.revocation == {"device": "good", "driver-rim": "good", "vbios-rim": "good"}


def test_bundle_rims_signed_by_an_untrusted_root_are_rejected(tmp_path: Path) -> None:
    ca, other = SimulatedCa.create(SIM_NOW), SimulatedCa.create(SIM_NOW)
    ev = ca.gpu("GPU-1").evidence(NONCE)
    (tmp_path / "b" / "rims").mkdir(parents=True)
    (tmp_path / "b" / "rims" / f"{ev.driver_rim_id}.xml").write_bytes(ev.driver_rim)
    result = import_bundle(tmp_path / "b", tmp_path / "s", other.trust_store(), SIM_NOW)
    assert result.rims == () and len(result.rejected) == 1
    assert not (tmp_path / "s" / "rims").exists()
