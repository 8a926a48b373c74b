"""RIM handling: hardened parsing, the signature's shape, golden values only from the signed tree, the cache."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from cc_gpu.attest.errors import RimError
from cc_gpu.attest.rim import RimCache, RimSignatureError, peek_version, verify_rim
from cc_gpu.attest.sim import SimulatedCa
from cc_gpu.attest.trust import TrustStore
from tests.attest.conftest import AT_2025, SIM_NOW, Sample

DRIVER = "Driver_RIM_test_no_gpu.swidtag"


def test_real_driver_rim(nvidia_211: Sample) -> None:
    rim = verify_rim(nvidia_211.rim(DRIVER), TrustStore.default(), AT_2025)
    assert rim.version == "545.00"
    assert rim.manufacturer_id == "5703"
    assert len(rim.measurements) == 64
    assert sorted(i for i, g in rim.measurements.items() if g.active) == [7, *range(21, 41)]
    assert [c.subject.rfc4514_string().split(",")[0] for c in rim.signer_chain][-1] == "CN=NVIDIA CoRIM signing Root CA"


def _swap(doc: bytes, old: bytes, new: bytes) -> bytes:
    assert old in doc
    return doc.replace(old, new, 1)


XXE = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'


@pytest.mark.parametrize(
    ("case", "mutate", "error"),
    [
        ("xxe-doctype", lambda d: XXE, RimError),
        ("doctype-on-real-rim", lambda d: b"<!DOCTYPE SoftwareIdentity>" + d, RimError),
        ("not-xml", lambda d: b"<<<", RimError),
        ("wrong-root", lambda d: b"<root/>", RimError),
        ("no-signature", lambda d: re.sub(rb"<ds:Signature .*</ds:Signature>", b"", d, flags=re.S), RimError),
        (
            "two-signatures",
            lambda d: _swap(
                d,
                b"</SoftwareIdentity>",
                re.search(rb"<ds:Signature .*</ds:Signature>", d, re.S).group(0)  # type: ignore[union-attr]
                + b"</SoftwareIdentity>",
            ),
            RimError,
        ),
        ("reference-uri-not-empty", lambda d: _swap(d, b'Reference URI=""', b'Reference URI="#x"'), RimError),
        (
            "extra-transform",
            lambda d: _swap(
                d,
                b"<ds:Transforms>",
                b'<ds:Transforms><ds:Transform Algorithm="http://www.w3.org/TR/1999/REC-xpath-19991116"/>',
            ),
            RimError,
        ),
        ("golden-value-changed", lambda d: _swap(d, b'ns2:Hash0="0e0ee161', b'ns2:Hash0="1e0ee161'), RimSignatureError),
        (
            "version-changed",
            lambda d: _swap(d, b'colloquialVersion="545.00"', b'colloquialVersion="999.00"'),
            RimSignatureError,
        ),
        (
            "signer-cert-removed",
            lambda d: re.sub(rb"<ds:X509Certificate>.*?</ds:X509Certificate>", b"", d, count=1, flags=re.S),
            RimSignatureError,
        ),
    ],
)
def test_bad_rims_are_refused(case: str, mutate, error: type[Exception], nvidia_211: Sample) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error):
        verify_rim(mutate(nvidia_211.rim(DRIVER)), TrustStore.default(), AT_2025)


def test_comment_injection_does_not_change_golden_values(nvidia_211: Sample) -> None:
    # A comment is removed by canonicalisation, so the signature still verifies; the values come from the signed tree.
    doc = _swap(nvidia_211.rim(DRIVER), b"<ns0:Payload", b"<!-- injected --><ns0:Payload")
    rim = verify_rim(doc, TrustStore.default(), AT_2025)
    assert rim.measurements[7].alternatives[0].hex().startswith("0e0ee161")


def test_rim_signed_by_a_foreign_root_is_refused(nvidia_211: Sample) -> None:
    ca = SimulatedCa.create(SIM_NOW)
    ev = ca.gpu("g").evidence(bytes(32))
    with pytest.raises(RimSignatureError, match="RIM signing chain"):
        verify_rim(ev.driver_rim, TrustStore.default(), SIM_NOW)
    with pytest.raises(RimSignatureError, match="RIM signing chain"):
        verify_rim(nvidia_211.rim(DRIVER), ca.trust_store(), AT_2025)


def test_cache_serves_only_inside_the_chain_validity(nvidia_211: Sample) -> None:
    cache = RimCache()
    trust = TrustStore.default()
    first = cache.verify(nvidia_211.rim(DRIVER), trust, AT_2025)
    assert cache.verify(nvidia_211.rim(DRIVER), trust, AT_2025 + timedelta(days=1)) is first
    with pytest.raises(RimSignatureError):
        cache.verify(nvidia_211.rim(DRIVER), trust, first.chain.not_after + timedelta(seconds=1))


def test_peek_version_is_only_a_hint(nvidia_211: Sample) -> None:
    assert peek_version(nvidia_211.rim(DRIVER)) == "545.00"
    assert peek_version(b"junk") is None
