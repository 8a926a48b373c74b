"""The verification service's core: judge evidence a confidential VM sends for a claim's challenge, record the verdict.

A submission is a nonce and the evidence of the VM's GPUs. The nonce is the capability: the service finds the
claim whose `status.devices[].data.attestation.challenge` records its SHA-256 (minted by the plugin at prepare,
`challenge.py`); an unknown nonce is refused without touching any claim. Then, in order:

1. the challenge is still open (a used one is refused as reused: the verdict it produced stands, an Event says why);
2. it has not expired, and the node that minted it is the node the claim is allocated to (a challenge written into a
   claim of another node is refused);
3. the policy is the one the plugin applies: decoded from the claim's allocation (the DeviceClass config copied there
   by the scheduler, immutable on the server), raised to the node floor of the service's settings, tightened by the
   claim, by the same code (`attestpolicy.py`); the device must ask for guest evidence;
4. each GPU's evidence is verified for this nonce by the same verifier as the host path;
5. the evidence's identity (the device certificate's serial, `ueid`) must be the identity the node recorded for the
   allocated GPU (at discovery or a pre-flight attestation, before CC mode went on); where none was recorded, the
   identity is taken on first use and the verdict says so;
6. the verdict is written on the claim (`Attested` True or False with `evidence: guest`, compact data, the
   challenge marked consumed) by one JSON patch conditioned on the resourceVersion read in step 1. Two replicas that
   judged the same nonce race on that write: one wins, the other re-reads and finds the challenge consumed. Nothing
   is written before the verdict is complete, so a crash before the write leaves the challenge open for a retry.

Only then is the token (ES384, the configured key) returned. A rejection is recorded the same way (`Attested=False`
with the failing checks) and a Warning Event is emitted. Tokens are never logged.

Challenges an admin registers without a claim (an interoperability check with a client's fixed sample nonce) are
verified under the admin's default attested policy (strict, raised to the node floor), single use per process, and
no claim is written.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cc_gpu.attest.guest import GuestEvidence, SubmissionResult
from cc_gpu.attest.policy import Policy
from cc_gpu.attest.token import TokenSigner
from cc_gpu.attest.verdict import Verdict
from cc_gpu.attest.verifier import Verifier
from cc_gpu.dra import attestcfg, opaque
from cc_gpu.dra.attestation import GUEST_EVIDENCE, builtin_policies
from cc_gpu.dra.attestcfg import AttestationRequest, AttestationSettings
from cc_gpu.dra.attestpolicy import AppliedPolicy, applied_policy
from cc_gpu.dra.attestresult import CONDITION, GUEST, MAX_CHECK_DETAIL
from cc_gpu.dra.challenge import CHALLENGE_BYTES, CONSUMED, OPEN, digest, matches, parse_rfc3339, rfc3339
from cc_gpu.dra.claimstatus import merged_devices
from cc_gpu.errors import CcGpuError
from cc_gpu.kube.api import KubeApi
from cc_gpu.kube.errors import ApiError, ConflictError, InvalidError

log = logging.getLogger("cc_gpu.dra.guestservice")
audit = logging.getLogger("cc_gpu.audit")

# Service-level checks, named like the verifier's (NVIDIA's claim names) with the project's prefix.
UNKNOWN = "x-cc-gpu-challenge-unknown"
REUSED = "x-cc-gpu-challenge-reused"
EXPIRED = "x-cc-gpu-challenge-expired"
WRONG_NODE = "x-cc-gpu-claim-node"
NOT_GUEST = "x-cc-gpu-claim-policy"
IDENTITY = "x-cc-gpu-device-identity"
GPU_COUNT = "x-cc-gpu-gpu-count"
MALFORMED = "x-cc-gpu-evidence-malformed"
RATE = "x-cc-gpu-rate-limited"
UNAVAILABLE = "x-cc-gpu-service-unavailable"
TOFU_SINGLE = "trust on first use (no identity was recorded for this GPU)"
TOFU_UNASSIGNED = "trust on first use, unassigned"


class RateLimiter:
    """A token bucket per client address: `rate` submissions a second, bursts of `burst`."""

    def __init__(self, rate: float = 5.0, burst: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if len(self._buckets) > 10_000:  # bounded: forget the idle ones
                self._buckets = {c: v for c, v in self._buckets.items() if now - v[1] < 60}
            if tokens < 1:
                self._buckets[client] = (tokens, now)
                return False
            self._buckets[client] = (tokens - 1, now)
            return True


@dataclass(frozen=True)
class _Target:
    """The claim a nonce belongs to, as read (with its resourceVersion), and this driver's entries that carry it."""

    claim: Mapping[str, Any]
    entries: tuple[Mapping[str, Any], ...]

    @property
    def namespace(self) -> str:
        return str(self.claim["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.claim["metadata"]["name"])

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def challenge(self) -> Mapping[str, Any]:
        return self.entries[0]["data"]["attestation"]["challenge"]  # type: ignore[no-any-return]


def _refused(checks: Iterable[str], claim: str | None, per_gpu: Sequence[Verdict] = ()) -> SubmissionResult:
    return SubmissionResult(False, tuple(per_gpu), None, tuple(checks), claim)


def allocated_node(claim: Mapping[str, Any]) -> str | None:
    """The node the claim's allocation is pinned to (`metadata.name In [node]`), if it is pinned to one."""
    selector = ((claim.get("status") or {}).get("allocation") or {}).get("nodeSelector") or {}
    for term in selector.get("nodeSelectorTerms") or []:
        for field in term.get("matchFields") or []:
            values = field.get("values") or []
            if field.get("key") == "metadata.name" and field.get("operator") == "In" and len(values) == 1:
                return str(values[0])
    return None


class GuestVerificationService:
    def __init__(  # noqa: PLR0917 - wiring of injected adapters, built in one place (the CLI)
        self,
        kube: KubeApi | None,
        verifier: Verifier,
        signer: TokenSigner,
        settings: AttestationSettings,
        driver: str,
        policies: Mapping[str, Policy] | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        collateral: Callable[[GuestEvidence], tuple[bytes, ...]] | None = None,
        registered: Iterable[bytes] = (),
        limiter: RateLimiter | None = None,
        replica: str = "",
    ) -> None:
        self.kube = kube
        self.verifier = verifier
        self.signer = signer
        self.settings = settings
        self.driver = driver
        self.policies = {**builtin_policies(), **(policies or {})}
        self.clock = clock or (lambda: datetime.now(UTC))
        self.collateral = collateral  # RIMs for a GPU's evidence (a simulated node's); None: the verifier's source
        self.limiter = limiter or RateLimiter()
        self.replica = replica
        self._registered = {digest(n): n for n in registered}
        self._lock = threading.Lock()

    # ---- the entry point ------------------------------------------------------------------------------------------

    def verify_submission(self, nonce: bytes, evidence: Sequence[GuestEvidence], *, client: str) -> SubmissionResult:
        """Judge `evidence` for the challenge `nonce`; the signed token only when accepted and recorded."""
        if not self.limiter.allow(client):
            return _refused([RATE], None)
        if len(nonce) != CHALLENGE_BYTES:
            return _refused([UNKNOWN], None)
        if not evidence:
            return _refused([MALFORMED], None)
        key = digest(nonce)
        with self._lock:
            registered = self._registered.pop(key, None)
        if registered is not None:
            return self._interop(nonce, evidence)
        if self.kube is None:
            return _refused([UNKNOWN], None)
        for _ in range(5):
            try:
                target = self._find(nonce)
            except ApiError as e:
                log.warning("cannot read claims", extra={"error": str(e)})
                return _refused([UNAVAILABLE], None)
            if target is None:
                audit.info("guest evidence for an unknown challenge refused",
                           extra={"audit": "guest-attestation", "client": client, "challenge_sha256": key})
                return _refused([UNKNOWN], None)
            if target.challenge.get("state") != OPEN:
                self._event(target, "GpuAttestationChallengeReused",
                            f"evidence submitted for a challenge already used at {target.challenge.get('consumedAt')}"
                            f"; the recorded verdict stands (client {client})")
                return _refused([REUSED], target.ref)
            outcome = self._judge(target, nonce, evidence)
            try:
                self._record(target, outcome)
            except ConflictError:
                continue  # the claim changed since it was read (another replica consumed it?): read again
            except ApiError as e:
                log.warning("cannot record the guest verdict", extra={"claim": target.ref, "error": str(e)})
                return _refused([UNAVAILABLE], target.ref)
            self._audit(target, outcome, client)
            if not outcome.accepted:
                self._event(target, "GpuAttestationRejected",
                            f"guest evidence rejected: {', '.join(outcome.failed_checks)}")
                return outcome.result()
            self._event(target, "GpuAttested", "guest evidence verified (evidence: guest)", warning=False)
            return outcome.result()
        return _refused([UNAVAILABLE], None)

    # ---- finding the claim ----------------------------------------------------------------------------------------

    def _find(self, nonce: bytes) -> _Target | None:
        assert self.kube is not None
        for claim in self.kube.list_resource_claims():
            entries = tuple(
                e for e in ((claim.get("status") or {}).get("devices") or [])
                if e.get("driver") == self.driver
                and isinstance(((e.get("data") or {}).get("attestation") or {}).get("challenge"), Mapping)
                and matches(e["data"]["attestation"]["challenge"], nonce)
            )
            if entries:
                return _Target(claim, entries)
        return None

    # ---- judging --------------------------------------------------------------------------------------------------

    def _judge(self, target: _Target, nonce: bytes, evidence: Sequence[GuestEvidence]) -> _Outcome:
        now = self.clock()
        record = target.challenge
        try:
            expires = parse_rfc3339(str(record["expiresAt"]))
        except (KeyError, ValueError):
            expires = None
        if expires is None or expires.tzinfo is None:
            return _Outcome.refused([EXPIRED], target, "the challenge record has no valid expiry")
        if now >= expires:
            return _Outcome.refused([EXPIRED], target, f"the challenge expired at {record['expiresAt']}")
        node = allocated_node(target.claim)
        pools = {str(e.get("pool")) for e in target.entries}
        if node is None or record.get("node") != node or pools != {node}:
            return _Outcome.refused([WRONG_NODE], target, f"the challenge was minted by node {record.get('node')!r}, "
                                    f"the claim is allocated to node {node!r} (pools {sorted(pools)})")
        try:
            applied = self._policies(target, node)
        except CcGpuError as e:
            return _Outcome.refused([NOT_GUEST], target, str(e))
        expected = [g for e in target.entries for g in (record_gpus(e))]
        elsewhere = {str(u) for e in target.entries for u in e["data"]["attestation"]["challenge"].get(
            "knownElsewhere") or []}
        if len(evidence) != len(expected):
            return _Outcome.refused([GPU_COUNT], target, f"evidence of {len(evidence)} GPUs for a claim of "
                                    f"{len(expected)}")
        policy = _strictest(list(applied.values()))
        verdicts = []
        for item in evidence:
            verdicts.append(self._verify(item, nonce, policy, now))
        failed = [f"{c.name} ({c.detail[:MAX_CHECK_DETAIL]})" if c.detail else c.name
                  for v in verdicts for c in v.failed]
        assignment, identity_failures = match_identities(expected, verdicts, elsewhere)
        failed += identity_failures
        return _Outcome(not failed, tuple(verdicts), tuple(failed), assignment, applied, target)

    def _policies(self, target: _Target, node: str) -> dict[tuple[str, str], AppliedPolicy]:
        """Each entry's policy, decoded from the allocation as the plugin decodes it; it must ask for guest evidence."""
        allocation = (target.claim.get("status") or {}).get("allocation") or {}
        devices = allocation.get("devices") or {}
        entries = opaque.entries_for_driver(devices.get("config") or [], self.driver)
        out = {}
        for entry in target.entries:
            result = next((r for r in devices.get("results") or []
                           if (r.get("driver"), r.get("pool"), r.get("device"))
                           == (self.driver, entry.get("pool"), entry.get("device"))), None)
            if result is None:
                raise CcGpuError(f"device {entry.get('device')} is not in the claim's allocation")
            config = opaque.resolve(entries, str(result.get("request", "")))
            req = attestcfg.request_of(config.extra)
            applied = applied_policy(req, self.settings, self.policies, node)
            if applied.evidence != GUEST_EVIDENCE:
                raise CcGpuError(f"device {entry.get('device')}: its policy does not ask for guest evidence")
            out[(str(entry.get("pool")), str(entry.get("device")))] = applied
        return out

    def _verify(self, item: GuestEvidence, nonce: bytes, policy: Policy, now: datetime) -> Verdict:
        rims = self.collateral(item) if self.collateral is not None else ()
        try:
            return self.verifier.verify(item.report, item.cert_chain_pem, nonce, policy, at=now, collected_at=now,
                                        rims=rims)
        except CcGpuError as e:
            from cc_gpu.attest.verdict import FAIL, Check  # noqa: PLC0415

            return Verdict((Check(MALFORMED, FAIL, str(e)[:MAX_CHECK_DETAIL]),), nonce.hex(), now,
                           policy.revocation.value)

    # ---- interop challenges ---------------------------------------------------------------------------------------

    def _interop(self, nonce: bytes, evidence: Sequence[GuestEvidence]) -> SubmissionResult:
        """An admin-registered challenge: the admin's default attested policy (strict, node floor), no claim."""
        applied = applied_policy(AttestationRequest(required=True, evidence=GUEST_EVIDENCE), self.settings,
                                 self.policies, "interop")
        now = self.clock()
        verdicts = []
        for item in evidence:
            try:
                verdicts.append(self.verifier.verify(item.report, item.cert_chain_pem, nonce, applied.policy, at=now,
                                                     collected_at=now))
            except CcGpuError as e:
                return _refused([f"{MALFORMED} ({str(e)[:MAX_CHECK_DETAIL]})"], None)
        failed = tuple(c.name for v in verdicts for c in v.failed)
        token = None
        if not failed:
            token = self.signer.sign(verdicts[0], {"x-cc-gpu-evidence": GUEST, "x-cc-gpu-policy": applied.label,
                                                   "x-cc-gpu-interop": True, **_submods(verdicts)})
        audit.info("interop guest evidence", extra={"audit": "guest-attestation", "result":
                                                    "accepted" if token else "rejected", "failed_checks": failed})
        return SubmissionResult(token is not None, tuple(verdicts), token, failed, None)

    # ---- recording ------------------------------------------------------------------------------------------------

    def _record(self, target: _Target, outcome: _Outcome) -> None:
        """One JSON patch of `status.devices`, conditioned on the resourceVersion read: consume + verdict, or nothing.

        The token is signed before the write (the write records its `jti`) and returned only after it succeeded."""
        assert self.kube is not None
        now = self.clock()
        if outcome.accepted:
            verdict = outcome.verdicts[0]
            extra = {"x-cc-gpu-claim-uid": target.claim["metadata"].get("uid"), "x-cc-gpu-claim": target.ref,
                     "x-cc-gpu-node": target.challenge.get("node"), "x-cc-gpu-driver": self.driver,
                     "x-cc-gpu-evidence": GUEST, "x-cc-gpu-nonce": "ours",
                     "x-cc-gpu-devices": [str(e.get("device")) for e in target.entries],
                     "x-cc-gpu-policy": "+".join(sorted({a.label for a in outcome.applied.values()})),
                     "x-cc-gpu-identity": {bdf: how for bdf, (_, how) in outcome.assignment.items()},
                     **_submods(outcome.verdicts)}
            outcome.token = self.signer.sign(verdict, extra)
        consumed = {**target.challenge, "state": CONSUMED, "consumedAt": rfc3339(now)}
        if self.replica:
            consumed["consumedBy"] = self.replica
        ours = []
        for entry in target.entries:
            key = (str(entry.get("pool")), str(entry.get("device")))
            applied = outcome.applied.get(key)
            attestation = dict(entry["data"]["attestation"])
            attestation.update({"ok": outcome.accepted, "state": "verified" if outcome.accepted else "rejected",
                                "evidence": GUEST, "challenge": consumed,
                                "gpus": outcome.gpus_of(entry), "verifiedAt": rfc3339(now)})
            if applied is not None:
                attestation["policy"] = applied.label
                attestation["applied"] = applied.describe()
            if outcome.failed_checks:
                attestation["failed"] = [f[:MAX_CHECK_DETAIL] for f in outcome.failed_checks[:16]]
            ours.append({"driver": self.driver, "pool": key[0], "device": key[1],
                         "conditions": [outcome.condition(rfc3339(now))], "data": {"attestation": attestation}})
        meta = target.claim["metadata"]
        devices = merged_devices((target.claim.get("status") or {}).get("devices") or [], ours)
        operations: list[dict[str, Any]] = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
            {"op": "test", "path": "/metadata/uid", "value": meta.get("uid")},
            {"op": "add", "path": "/status/devices", "value": devices},
        ]
        try:
            self.kube.json_patch_resource_claim_status(target.namespace, target.name, operations)
        except InvalidError as e:
            if not e.causes:
                raise ConflictError(f"the claim changed: {e}") from e  # a failed `test`: someone wrote meanwhile
            raise

    def _event(self, target: _Target, reason: str, message: str, warning: bool = True) -> None:
        assert self.kube is not None
        meta = target.claim["metadata"]
        now = rfc3339(self.clock())
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'claim')}.", "namespace": target.namespace},
            "involvedObject": {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "name": meta.get("name"),
                               "namespace": target.namespace, "uid": meta.get("uid")},
            "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
            "source": {"component": f"{self.driver}/attestation-service"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self.kube.create_event(target.namespace, body)
        except ApiError as e:
            log.warning("could not emit event", extra={"claim": target.ref, "error": str(e)})

    def _audit(self, target: _Target, outcome: _Outcome, client: str) -> None:
        audit.info("guest gpu attestation verdict", extra={
            "audit": "guest-attestation", "result": "accepted" if outcome.accepted else "rejected",
            "claim": target.ref, "claim_uid": target.claim["metadata"].get("uid"), "client": client,
            "devices": [str(e.get("device")) for e in target.entries], "failed_checks": list(outcome.failed_checks),
            "ueids": [v.identity.ueid for v in outcome.verdicts], "replica": self.replica})


def record_gpus(entry: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The GPUs a device entry's challenge record names, with the identity the node recorded for each (or None)."""
    gpus = entry["data"]["attestation"]["challenge"].get("gpus") or []
    return [g for g in gpus if isinstance(g, Mapping)]


def match_identities(expected: Sequence[Mapping[str, Any]], verdicts: Sequence[Verdict],
                     elsewhere: Iterable[str] = ()) -> tuple[dict[str, tuple[str | None, str]], list[str]]:
    """Assign each verdict to an allocated GPU by identity: recorded identities must be present; the remaining
    evidence is taken on first use for the GPUs with none recorded, unless the node knows that identity for another
    PCI device (`elsewhere`). Returns bdf -> (ueid, how) and the failures."""
    elsewhere = set(elsewhere)
    failures: list[str] = []
    seen = [v.identity.ueid for v in verdicts]
    assignment: dict[str, tuple[str | None, str]] = {}
    unrecorded = []
    for gpu in expected:
        bdf, ueid = str(gpu.get("bdf")), gpu.get("ueid")
        if ueid:
            if ueid in seen:
                seen.remove(ueid)
                assignment[bdf] = (str(ueid), f"recorded: {gpu.get('identity', 'recorded')}")
            else:
                failures.append(f"{IDENTITY} (no evidence from the GPU allocated at {bdf}, identity ueid {ueid}; "
                                f"evidence names {[v.identity.ueid for v in verdicts]})")
        else:
            unrecorded.append(bdf)
    for bdf in unrecorded:
        if not seen:
            break
        ueid = seen.pop(0)
        if ueid is None:
            failures.append(f"{IDENTITY} (the evidence carries no device identity)")
            continue
        if ueid in elsewhere:
            failures.append(f"{IDENTITY} (evidence identity ueid {ueid} belongs to another GPU of this node, not to "
                            f"{bdf})")
            continue
        if len(unrecorded) == 1:
            assignment[bdf] = (ueid, TOFU_SINGLE)
        else:
            # Several GPUs without a recorded identity: the evidence says which GPUs, not which PCI device each one
            # sits at (the VM's addresses are not the host's), so no identity is tied to a device.
            assignment[bdf] = (None, f"{TOFU_UNASSIGNED} ({len(unrecorded)} GPUs of this claim had no recorded "
                                     f"identity; evidence named {ueid}, which PCI device gave it is not known)")
    return assignment, failures


def _submods(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    return {"submods": {f"GPU-{i}": v.claims() for i, v in enumerate(verdicts)}}


def _strictest(applied: Sequence[AppliedPolicy]) -> Policy:
    policy = applied[0].policy
    for other in applied[1:]:
        policy = policy.combine(other.policy)
    return policy


@dataclass
class _Outcome:
    accepted: bool
    verdicts: tuple[Verdict, ...]
    failed_checks: tuple[str, ...]
    assignment: dict[str, tuple[str | None, str]]
    applied: dict[tuple[str, str], AppliedPolicy]
    target: _Target
    token: str | None = None

    @classmethod
    def refused(cls, checks: Sequence[str], target: _Target, detail: str) -> _Outcome:
        return cls(False, (), tuple(f"{c} ({detail})" for c in checks), {}, {}, target)

    def result(self) -> SubmissionResult:
        return SubmissionResult(self.accepted, self.verdicts, self.token if self.accepted else None,
                                tuple(f.split(" (", 1)[0] for f in self.failed_checks), self.target.ref)

    def condition(self, now: str) -> dict[str, Any]:
        if self.accepted:
            how = sorted({how.split(":", 1)[0] for _, how in self.assignment.values()})
            message = (f"evidence: guest; GPU evidence from inside the VM verified for this claim's challenge "
                       f"(identity {', '.join(how)}); token issued to the guest")
        else:
            message = f"evidence: guest; GPU evidence rejected: {'; '.join(self.failed_checks)}"
        return {"type": CONDITION, "status": "True" if self.accepted else "False",
                "reason": "GuestEvidenceVerified" if self.accepted else "GuestEvidenceRejected",
                "message": message[:1024], "lastTransitionTime": now}

    def gpus_of(self, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
        out = []
        for gpu in record_gpus(entry):
            bdf = str(gpu.get("bdf"))
            ueid, how = self.assignment.get(bdf, (None, "not matched"))
            verdict = next((v for v in self.verdicts if ueid and v.identity.ueid == ueid), None)
            if how.startswith(TOFU_UNASSIGNED):
                ueid = None
            item: dict[str, Any] = {"bdf": bdf, "evidence": GUEST, "ueid": ueid, "identity": how,
                                    "ok": self.accepted}
            if verdict is not None:
                item.update({"hwmodel": verdict.identity.hwmodel, "driverVersion": verdict.driver_version,
                             "vbiosVersion": verdict.vbios_version, "result": verdict.result_text,
                             "revocation": verdict.revocation_mode})
            out.append(item)
        return out


def token_fingerprint(token: str) -> str:
    """A token's short fingerprint for logs (never the token)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]

