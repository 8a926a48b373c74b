"""The verifier: evidence + nonce + policy + time in, a `Verdict` out.

One `Verifier` is created per process (or per plugin) and reused: it holds the injected trust store, RIM source,
revocation checker and clock, and caches that are safe to share (decoded certificate chains by content, validated
chains by content and trust store within their validity window, verified RIMs by content digest). Every check runs
and is reported even after an earlier one failed, when it still means something, so a rejected verdict names all
the reasons. Nothing here raises for bad evidence: bad evidence is a verdict.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import Encoding

from cc_gpu.attest import policy as P
from cc_gpu.attest.certs import (
    ChainError,
    ValidatedChain,
    common_name,
    leaf_fwid,
    load_pem_chain,
    signed_by,
    validate_chain,
    verify_report_signature,
)
from cc_gpu.attest.errors import CertificateParseError, EvidenceParseError, RimError
from cc_gpu.attest.evidence import AttestationReport, decode_report_text, parse_report
from cc_gpu.attest.measure import compare
from cc_gpu.attest.ocsp import RevocationChecker, RevocationMode
from cc_gpu.attest.rim import RimCache, RimSignatureError, VerifiedRim, peek_version
from cc_gpu.attest.sources import RimSource, driver_rim_id, is_vbios_version, vbios_rim_id
from cc_gpu.attest.trust import TrustStore
from cc_gpu.attest.verdict import FAIL, NOT_APPLICABLE, PASS, SKIPPED, UNVERIFIABLE, Check, GpuIdentity, Verdict
from cc_gpu.errors import CcGpuError

DEVICE_CHAIN_LENGTH = 5
CACHE_LIMIT = 4096  # entries per cache; a node has a handful of GPUs, so only junk input ever reaches it


def _remember(cache: dict[Any, Any], key: object, value: object) -> None:
    """Insert, dropping everything first when full (caches hold only re-derivable results)."""
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[key] = value


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Run:
    """Mutable scratchpad of one verification; turned into a frozen Verdict at the end."""

    policy: P.Policy
    at: datetime
    results: dict[str, tuple[str, str]] = field(default_factory=dict)
    ocsp: dict[str, str] = field(default_factory=dict)
    optional: set[str] = field(default_factory=set)
    mismatches: tuple[int, ...] = ()

    def set(self, name: str, status: str, detail: str = "") -> None:
        self.results[name] = (status, detail)

    def verdict(
        self,
        nonce: bytes,
        report: AttestationReport | None = None,
        chain: ValidatedChain | None = None,
        driver: VerifiedRim | None = None,
    ) -> Verdict:
        required = self.policy.required_checks - self.optional
        checks = tuple(
            Check(name, *self.results.get(name, (SKIPPED, "not reached")), required=name in required)
            for name in P.ALL_CHECKS
        )
        return Verdict(
            checks=checks,
            nonce=nonce.hex(),
            verified_at=self.at,
            revocation_mode=self.policy.revocation.value,
            revocation=dict(self.ocsp),
            identity=GpuIdentity(
                ueid=None if chain is None else str(chain.path[0].serial_number),
                hwmodel=None if chain is None or len(chain.path) < 2 else common_name(chain.path[1]),
                oemid=None if driver is None else driver.manufacturer_id,
            ),
            driver_version=None if report is None else report.opaque.driver_version,
            vbios_version=None if report is None else report.opaque.vbios_version,
            mismatched_indexes=self.mismatches,
            gpu_mode=None if report is None else report.opaque.gpu_mode,
        )


class Verifier:
    def __init__(
        self,
        trust: TrustStore,
        rim_source: RimSource | None = None,
        revocation: RevocationChecker | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.trust = trust
        self.rim_source = rim_source
        self.revocation = revocation if revocation is not None else RevocationChecker()
        self.clock = clock
        self._trust_id = trust.fingerprint()
        self._rims = RimCache()
        self._pem_cache: dict[bytes, tuple[x509.Certificate, ...]] = {}
        self._chain_cache: dict[bytes, ValidatedChain] = {}
        self._links: dict[tuple[bytes, bytes], bool] = {}
        self._lock = threading.Lock()

    # -- public API ----------------------------------------------------------------------------------------------

    def verify(
        self,
        report: bytes | str,
        cert_chain: bytes | Sequence[x509.Certificate],
        nonce: bytes,
        policy: P.Policy | None = None,
        *,
        at: datetime | None = None,
        collected_at: datetime | None = None,
        rims: Sequence[bytes] = (),
    ) -> Verdict:
        """Verify one GPU's evidence. `report` is raw bytes or NVML hex text; `cert_chain` PEM bytes or certificates.

        `at` is the verification time (default: the clock); `collected_at` is when the evidence was obtained (default:
        `at`), judged against the policy's maximum evidence age; `rims` are explicit RIM documents that take the
        place of the RIM source.
        """
        policy = policy if policy is not None else P.Policy()
        at = at if at is not None else self.clock()
        if at.tzinfo is None:
            raise ValueError("verification time must be timezone-aware")
        run = _Run(policy=policy, at=at)
        try:
            parsed = parse_report(decode_report_text(report))
        except EvidenceParseError as e:
            run.set(P.CHECK_PARSED, FAIL, str(e))
            return run.verdict(nonce)
        run.set(P.CHECK_PARSED, PASS)
        self._check_nonce(run, parsed, nonce)
        self._check_age(run, collected_at)
        chain = self._check_chain(run, parsed, cert_chain)
        self._check_versions(run, parsed)
        chip = None if chain is None or len(chain.path) < 2 else common_name(chain.path[1]).split(" ")[0]
        driver, vbios = self._check_rims(run, parsed, rims, chip)
        self._check_measurements(run, parsed, driver, vbios)
        return run.verdict(nonce, parsed, chain, driver)

    # -- the checks ----------------------------------------------------------------------------------------------

    def _check_nonce(self, run: _Run, report: AttestationReport, nonce: bytes) -> None:
        if hmac.compare_digest(report.nonce, nonce):
            run.set(P.CHECK_NONCE, PASS)
        else:
            run.set(P.CHECK_NONCE, FAIL, f"report nonce {report.nonce.hex()} is not the nonce issued")

    def _check_age(self, run: _Run, collected_at: datetime | None) -> None:
        limit = run.policy.max_evidence_age_s
        if collected_at is None:
            # No collection time: nothing to measure an age against. Freshness then rests on the nonce alone (the
            # caller chose it); claiming "0 s old" would assert what was not checked.
            run.set(P.CHECK_EVIDENCE_AGE, NOT_APPLICABLE, "no collection time; freshness rests on the nonce")
            return
        age = (run.at - collected_at).total_seconds()
        if age < 0:
            run.set(P.CHECK_EVIDENCE_AGE, FAIL, f"evidence collected {-age:.0f} s after the verification time")
        elif limit is not None and age > limit:
            run.set(P.CHECK_EVIDENCE_AGE, FAIL, f"evidence is {age:.0f} s old, policy allows {limit:.0f} s")
        else:
            run.set(P.CHECK_EVIDENCE_AGE, PASS, f"{age:.0f} s old")

    def _certs(self, cert_chain: bytes | Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
        if not isinstance(cert_chain, bytes):
            return tuple(cert_chain)
        with self._lock:
            hit = self._pem_cache.get(cert_chain)
        if hit is None:
            hit = load_pem_chain(cert_chain)
            with self._lock:
                _remember(self._pem_cache, cert_chain, hit)
        return hit

    def _validated(
        self,
        certs: Sequence[x509.Certificate],
        anchors: Sequence[x509.Certificate],
        at: datetime,
        expected_length: int,
    ) -> ValidatedChain:
        """`validate_chain` with a cache by chain content; the trust store is fixed per verifier."""
        h = hashlib.sha256(expected_length.to_bytes(1, "big"))
        for cert in (*anchors, None, *certs):
            h.update(b"|" if cert is None else cert.public_bytes(Encoding.DER))
        key = h.digest()
        with self._lock:
            hit = self._chain_cache.get(key)
        if hit is not None and hit.valid_at(at):
            return hit
        chain = validate_chain(certs, anchors, at, expected_length, self._signed_by)
        with self._lock:
            _remember(self._chain_cache, key, chain)
        return chain

    def _signed_by(self, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        """Memoised issuer-signature check: RIM signing chains share their upper certificates."""
        key = (cert.fingerprint(SHA256()), issuer.fingerprint(SHA256()))
        with self._lock:
            known = self._links.get(key)
        if known is None:
            known = signed_by(cert, issuer)
            with self._lock:
                _remember(self._links, key, known)
        return known

    def _revoked(self, run: _Run, chain: ValidatedChain, indexes: range, label: str) -> str | None:
        """Checks OCSP for `chain.path[i]` per policy; returns a failure reason or None."""
        mode = run.policy.revocation
        if mode is RevocationMode.OFF:
            run.ocsp[label] = "off"
            return None
        statuses = []
        for i in indexes:
            cert, issuer = chain.path[i], chain.path[i + 1]
            try:
                status = self.revocation.check(cert, issuer, run.at, mode)
            except CcGpuError as e:
                run.ocsp[label] = "error"
                return f"revocation of {common_name(cert)!r} could not be established ({mode.value}): {e}"
            statuses.append(status.status)
            if status.status == "revoked" or (status.status == "hold" and not run.policy.allow_certificate_hold):
                run.ocsp[label] = status.status
                return f"{common_name(cert)!r} is {status.status} (OCSP, {status.source})"
        run.ocsp[label] = "hold" if "hold" in statuses else "good"
        return None

    def _check_chain(
        self, run: _Run, report: AttestationReport, cert_chain: bytes | Sequence[x509.Certificate]
    ) -> ValidatedChain | None:
        try:
            certs = self._certs(cert_chain)
        except CertificateParseError as e:
            for name in (P.CHECK_CHAIN, P.CHECK_SIGNATURE, P.CHECK_FWID):
                run.set(name, FAIL, str(e))
            return None
        chain: ValidatedChain | None = None
        try:
            chain = self._validated(certs, self.trust.device_roots, run.at, DEVICE_CHAIN_LENGTH)
        except ChainError as e:
            run.set(P.CHECK_CHAIN, FAIL, e.reason)
        if chain is not None:
            reason = self._revoked(run, chain, range(1, len(chain.path) - 1), "device")
            run.set(P.CHECK_CHAIN, FAIL if reason else PASS, reason or f"revocation {run.ocsp['device']}")
        leaf = chain.leaf if chain is not None else (certs[0] if certs else None)
        if leaf is not None and verify_report_signature(leaf, report.signed_bytes, report.signature):
            run.set(P.CHECK_SIGNATURE, PASS, "" if chain else "signed by an untrusted leaf")
        else:
            run.set(P.CHECK_SIGNATURE, FAIL, "ECDSA P-384 signature does not verify with the leaf key")
        reported = report.opaque.fwid
        if reported is None:
            run.set(P.CHECK_FWID, NOT_APPLICABLE, "report carries no FWID")
        elif leaf is None:
            run.set(P.CHECK_FWID, FAIL, "no leaf certificate")
        else:
            try:
                in_cert = leaf_fwid(leaf)
            except ChainError as e:
                run.set(P.CHECK_FWID, FAIL, e.reason)
            else:
                ok = in_cert is not None and hmac.compare_digest(in_cert, reported)
                run.set(P.CHECK_FWID, PASS if ok else FAIL, "" if ok else "report FWID differs from the leaf's")
        return chain

    def _check_versions(self, run: _Run, report: AttestationReport) -> None:
        for name, value, minimum, key in (
            (P.CHECK_DRIVER_VERSION, report.opaque.driver_version, run.policy.min_driver, P.driver_version_key),
            (P.CHECK_VBIOS_VERSION, report.opaque.vbios_version, run.policy.min_vbios, P.vbios_version_key),
        ):
            if value is None:
                run.set(name, FAIL, "not in the report")
                continue
            try:
                ok = minimum is None or key(value) >= key(minimum)
            except CcGpuError:
                ok = False
            run.set(name, PASS if ok else FAIL, value if ok else f"{value} is below the minimum {minimum}")

    def _route_explicit(self, rims: Sequence[bytes], at: datetime) -> dict[str, bytes]:
        """Sorts explicitly given RIMs into driver and VBIOS by their version's form (VBIOS: five hex pairs)."""
        routed: dict[str, bytes] = {}
        for content in rims:
            try:  # a RIM that verifies is routed by its signed version (and is cached for the check that follows)
                version = self._rims.verify(content, self.trust, at, self._trust_id, self._validated).version
            except CcGpuError:  # one that does not is routed by its unverified version, then fails its checks
                version = peek_version(content) or ""
            routed.setdefault("vbios" if is_vbios_version(version) else "driver", content)
        return routed

    def _check_rims(
        self, run: _Run, report: AttestationReport, rims: Sequence[bytes], chip: str | None = None
    ) -> tuple[VerifiedRim | None, VerifiedRim | None]:
        explicit = self._route_explicit(rims, run.at) if rims else {}
        found: dict[str, VerifiedRim | None] = {}
        for kind, rim_id, version in (
            ("driver", driver_rim_id(report, chip), report.opaque.driver_version),
            ("vbios", vbios_rim_id(report), report.opaque.vbios_version),
        ):
            found[kind] = self._check_rim(run, kind, rim_id, version, explicit.get(kind), bool(rims))
        return found["driver"], found["vbios"]

    def _check_rim(  # noqa: PLR0917 - private helper, one call site
        self, run: _Run, kind: str, rim_id: str | None, version: str | None, content: bytes | None, explicit: bool
    ) -> VerifiedRim | None:
        def step(what: str, status: str, detail: str = "") -> None:
            run.set(P.rim_check(kind, what), status, detail)

        if content is None and not explicit and self.rim_source is not None and rim_id is not None:
            try:
                content = self.rim_source.fetch(rim_id)
            except CcGpuError as e:
                step("fetched", FAIL, f"{rim_id}: {e}")
                return None
        if content is None:
            status = FAIL if run.policy.missing_rim_fails else UNVERIFIABLE
            step("fetched", status, f"no {kind} RIM available ({rim_id or 'id unknown'})")
            for what in P.RIM_STEPS[1:]:
                step(what, UNVERIFIABLE if status == UNVERIFIABLE else SKIPPED, "no RIM")
                if status == UNVERIFIABLE:
                    run.optional.add(P.rim_check(kind, what))
            if status == UNVERIFIABLE:
                run.optional.add(P.rim_check(kind, "fetched"))
            return None
        step("fetched", PASS, rim_id or "")
        try:
            rim = self._rims.verify(content, self.trust, run.at, self._trust_id, self._validated)
        except RimError as e:
            step("schema-validated", FAIL, str(e))
            return None
        except RimSignatureError as e:
            step("schema-validated", PASS)
            chain_failed = e.reason.startswith("RIM signing chain")
            step("cert-chain", FAIL if chain_failed else PASS, e.reason if chain_failed else "")
            step("signature-verified", SKIPPED if chain_failed else FAIL, "" if chain_failed else e.reason)
            return None
        step("schema-validated", PASS)
        step("signature-verified", PASS)
        reason = self._revoked(run, rim.chain, range(0, len(rim.chain.path) - 1), f"{kind}-rim")
        step("cert-chain", FAIL if reason else PASS, reason or f"revocation {run.ocsp[f'{kind}-rim']}")
        matches = version is not None and rim.version.lower() == version.lower()
        step("version-match", PASS if matches else FAIL, f"RIM {rim.version}, report {version}")
        if reason or not matches:
            return None
        return rim

    def _check_measurements(
        self, run: _Run, report: AttestationReport, driver: VerifiedRim | None, vbios: VerifiedRim | None
    ) -> None:
        if driver is None or vbios is None:
            run.set(P.CHECK_MEASUREMENTS, UNVERIFIABLE, "measurements unverifiable without both verified RIMs")
            run.set(P.CHECK_INDEX_CONFLICT, UNVERIFIABLE, "needs both RIMs")
            present = {"driver": driver, "vbios": vbios}
            missing_only = all(
                present[k] is not None or run.results[P.rim_check(k, "fetched")][0] == UNVERIFIABLE for k in P.RIM_KINDS
            )
            if missing_only:  # only absent RIMs, and the policy says to report that rather than fail
                run.optional.update({P.CHECK_MEASUREMENTS, P.CHECK_INDEX_CONFLICT})
            return
        result = compare(report, driver.measurements, vbios.measurements)
        if result.conflicts:
            run.set(P.CHECK_INDEX_CONFLICT, FAIL, f"indexes active in both RIMs: {list(result.conflicts)}")
        else:
            run.set(P.CHECK_INDEX_CONFLICT, PASS)
        if result.ok:
            skipped = f", skipped {list(result.skipped)} (NVDEC0 disabled)" if result.skipped else ""
            run.set(P.CHECK_MEASUREMENTS, PASS, f"{result.compared} measurements match{skipped}")
        else:
            run.mismatches = result.mismatches
            conflicts = f"; indexes in both RIMs: {list(result.conflicts)}" if result.conflicts else ""
            run.set(P.CHECK_MEASUREMENTS, FAIL, f"mismatching indexes: {list(result.mismatches)}{conflicts}")
