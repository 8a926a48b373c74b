"""Attested claims: attest each GPU with a fresh nonce before it is bound, sign the verdict, hand the token over.

Called by the prepare path (`state.py`) under the claim's group locks and *before* anything else happens: a rejected
GPU stays with the host, the checkpoint and the CDI root are untouched, and the claim fails with the failing checks
named (in the kubelet's error, an `Attested=False` condition on the claim, a Warning Event and one audit log line).
An accepted GPU gets a signed ES384 token binding the verdict to the claim UID, the pod UIDs, the node, the GPU's
identity and PCI address, the nonce and an expiry; the token reaches the container through the CDI spec, as an
environment variable (which travels inside the OCI spec to a confidential guest's agent) and, where the runtime
shares host files, as a read-only file.

At discovery the engine collects evidence from every GPU still on the host driver and verifies it against the
discovery policy; the results become ResourceSlice attributes (`attested`, `driverVersion`, `vbiosVersion`) and the
evidence is kept for GPUs that later sit on vfio-pci (used when the claim's policy allows evidence of that age).

This is a host-side control: it keeps a GPU whose firmware or configuration fails policy out of confidential pods and
records why. The host is not trusted by the guest, so it never replaces attestation inside the guest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import jwt

from cc_gpu.attest.policy import Policy
from cc_gpu.attest.token import TokenSigner
from cc_gpu.attest.verdict import Verdict
from cc_gpu.attest.verifier import Verifier
from cc_gpu.dra import attestcfg
from cc_gpu.dra.attestcfg import AttestationRequest, AttestationSettings
from cc_gpu.dra.attestpolicy import AppliedPolicy, applied_policy
from cc_gpu.dra.attestresult import (
    GUEST,
    HOST_PREFLIGHT,
    TOKEN_MOUNT_DIR,
    ClaimAttestation,
    DeviceResult,
    GpuResult,
    gpu_token_name,
    now_rfc3339,
    semver_of_driver,
    token_env_name,
    update_device_status,
)
from cc_gpu.dra.cdi import CdiMount
from cc_gpu.dra.challenge import (
    ENV_CHALLENGE,
    ENV_CLAIM_NAME,
    ENV_CLAIM_NAMESPACE,
    ENV_CLAIM_UID,
    ENV_DEVICES,
    ENV_SERVICE_CA,
    ENV_SERVICE_URL,
    Challenge,
)
from cc_gpu.dra.claims import ClaimPlan
from cc_gpu.dra.evidence import Evidence, EvidenceProvider
from cc_gpu.dra.identity import IdentityMismatchError, IdentityStore
from cc_gpu.dra.keys import NodeKeyStore
from cc_gpu.dra.keys import publish as publish_keys
from cc_gpu.dra.ports import GpuView
from cc_gpu.errors import CcGpuError, PermanentError
from cc_gpu.files import UnsafeNameError, safe_child, write_atomic
from cc_gpu.host.ccmode import HIDDEN_FROM_HOST
from cc_gpu.kube.api import KubeApi
from cc_gpu.kube.errors import ApiError

log = logging.getLogger("cc_gpu.dra.attestation")
audit = logging.getLogger("cc_gpu.audit")

GUEST_EVIDENCE = "guest"
PUBLISH_BACKOFF_MIN = timedelta(seconds=30)
PUBLISH_BACKOFF_MAX = timedelta(minutes=10)


class AttestationRejectedError(PermanentError):
    """Evidence failed policy (or could not be had in a way the policy accepts); the message names the checks."""

    reason = "attestation"


class HostOps(Protocol):
    """What attestation needs from the host: a GPU's current driver and a temporary move to the host driver."""

    def driver_of(self, bdf: str) -> str | None: ...

    def on_host_driver(self, bdf: str) -> contextlib.AbstractContextManager[None]: ...

    def cc_mode_of(self, bdf: str) -> str:
        """The GPU's CC mode as the host reads it now (BAR0 or sysfs; `unknown` on a vfio driver)."""
        ...


def builtin_policies() -> dict[str, Policy]:
    return {"strict": Policy(), "lenient": Policy(missing_rim_fails=False)}


class AttestationEngine:
    def __init__(  # noqa: PLR0917 - wiring of injected adapters, built in one place (attestsetup.py)
        self,
        settings: AttestationSettings,
        provider: EvidenceProvider | None,
        verifier: Verifier,
        keys: NodeKeyStore,
        host: HostOps,
        kube: KubeApi,
        driver: str,
        node: str,
        token_dir: Path,
        policies: Mapping[str, Policy] | None = None,
        clock: Callable[[], datetime] | None = None,
        identities: IdentityStore | None = None,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.verifier = verifier
        self.keys = keys
        self.host = host
        self.kube = kube
        self.driver = driver
        self.node = node
        self.token_dir = token_dir
        self.policies = {**builtin_policies(), **(policies or {})}
        self.clock = clock or (lambda: datetime.now(UTC))
        self.identities = identities or IdentityStore()
        self._discovered: dict[str, Evidence] = {}
        self._discovery_verdicts: dict[str, Verdict] = {}
        self._lock = threading.Lock()
        self._published_kid: str | None = None
        self._publish_backoff = timedelta(0)
        self._publish_retry_at: datetime | None = None
        # Events are the audit trail, not part of the answer: they are sent off the prepare path, in order, as
        # client-go's event recorder does (the audit log line is written synchronously).
        self._events = ThreadPoolExecutor(max_workers=1, thread_name_prefix="attestation-events")

    def close(self) -> None:
        """Send the events still queued, then stop."""
        self._events.shutdown(wait=True)

    # ---- keys ----------------------------------------------------------------------------------------------------

    def publish_keys(self) -> None:
        """Make sure the current key exists and the published ConfigMap lists it (and its recent predecessors).

        A failure (the key namespace missing, RBAC not granted yet) is retried with exponential backoff, not at every
        rescan or prepare, so a misconfigured node does not send the API server a failing write every few seconds.
        """
        kid = self.keys.current().kid
        now = self.clock()
        if self._publish_retry_at is not None and now < self._publish_retry_at:
            return
        try:
            publish_keys(self.kube, self.keys, self.settings.keys_namespace)
        except ApiError as e:
            self._publish_backoff = min(max(2 * self._publish_backoff, PUBLISH_BACKOFF_MIN), PUBLISH_BACKOFF_MAX)
            self._publish_retry_at = now + self._publish_backoff
            log.warning("could not publish token keys; retrying later",
                        extra={"error": str(e), "retry_in_seconds": self._publish_backoff.total_seconds()})
            return
        self._publish_backoff, self._publish_retry_at = timedelta(0), None
        self._published_kid = kid

    def _signer(self) -> TokenSigner:
        key = self.keys.current()
        if key.kid != self._published_kid:
            self.publish_keys()
        return TokenSigner(key.signing_key, key.kid, ttl=timedelta(seconds=self.settings.token_ttl_seconds))

    # ---- discovery -----------------------------------------------------------------------------------------------

    def annotate(self, devices: Sequence[GpuView]) -> list[GpuView]:
        """Attest what can be attested now and return the devices with their attestation attributes."""
        if self.provider is None or not self.settings.discovery:
            return list(devices)
        policy = self.policies.get(self.settings.discovery_policy, Policy())
        out = []
        for view in devices:
            for bdf in view.gpus:
                self._discover_one(bdf, policy)
            out.append(replace(view, attributes={**view.attributes, **self._attributes(view)}))
        return out

    def _discover_one(self, bdf: str, policy: Policy) -> None:
        assert self.provider is not None
        if self.provider.needs_host_driver and (self.host.driver_of(bdf) != "nvidia"
                                                or self.host.cc_mode_of(bdf) in HIDDEN_FROM_HOST):
            return  # keep what was collected while it was on the host driver and still served the host
        if not self.provider.takes_nonce and not self.settings.allow_foreign_nonce:
            return  # evidence with a nonce we did not choose is not judged unless the admin allows it
        try:
            evidence = self.provider.collect(bdf, os.urandom(32))
            verdict = self.verifier.verify(evidence.report, evidence.cert_chain, evidence.nonce, policy,
                                           collected_at=evidence.collected_at, rims=evidence.rims)
        except CcGpuError as e:
            log.info("no discovery evidence", extra={"bdf": bdf, "error": str(e)})
            return
        if verdict.ok and self.provider.takes_nonce and verdict.identity.ueid:
            self.identities.learn(bdf, verdict.identity.ueid, f"{self.provider.name} at discovery", self.clock())
        with self._lock:
            self._discovered[bdf] = evidence
            self._discovery_verdicts[bdf] = verdict

    def _attributes(self, view: GpuView) -> dict[str, Any]:
        with self._lock:
            verdicts = [self._discovery_verdicts.get(b) for b in view.gpus]
        known = [v for v in verdicts if v is not None]
        attrs: dict[str, Any] = {"attested": {"bool": bool(known) and len(known) == len(verdicts)
                                              and all(v.ok for v in known)}}
        if known:
            semver = semver_of_driver(known[0].driver_version)
            if semver:
                attrs["driverVersion"] = {"version": semver}
            if known[0].vbios_version:
                attrs["vbiosVersion"] = {"string": known[0].vbios_version[:64]}
        return attrs

    # ---- prepare -------------------------------------------------------------------------------------------------

    def applied_for(self, req: AttestationRequest) -> AppliedPolicy:
        """The policy actually applied: class, node minimum and claim combined (`attestpolicy.py`)."""
        return applied_policy(req, self.settings, self.policies, self.node)

    def policy_for(self, req: AttestationRequest) -> Policy:
        return self.applied_for(req).policy

    def _wanted(self, plan: ClaimPlan) -> list[tuple[Any, AttestationRequest]]:
        """The devices to attest: those with an `attestation` section, or all when the node minimum says so."""
        plain = self.settings.minimum.plain_vfio
        return [(d, attestcfg.request_of(d.config.extra)) for d in plan.devices
                if plain or attestcfg.SECTION in d.config.extra]

    def recheck(self, plan: ClaimPlan) -> bool:
        """Attest `plan`'s GPUs again, without events or records (a quarantine's check): True unless a required one
        fails. Guest-evidence devices are not attested on the host: they pass here."""
        for planned, req in self._wanted(plan):
            applied = self.applied_for(req)
            if applied.evidence == GUEST_EVIDENCE or not applied.required:
                continue
            for bdf in planned.device.gpus:
                if not self._attest_gpu(bdf, applied, plan, planned.device.name, []).ok:
                    return False
        return True

    def attest_claim(self, claim: Mapping[str, Any], plan: ClaimPlan) -> ClaimAttestation | None:
        """Attest every device of `plan` whose config has an attestation section; raise when a required one fails."""
        wanted = self._wanted(plan)
        if not wanted:
            return None
        pod_uids = [str(plan.pod.get("uid", ""))] if plan.pod.get("uid") else []
        results = []
        challenge: Challenge | None = None
        for planned, req in wanted:
            applied = self.applied_for(req)
            if applied.evidence == GUEST_EVIDENCE:
                challenge = challenge or self._mint_challenge()
                results.append(self._guest_pending(planned, applied, challenge))
                continue
            gpus = tuple(self._attest_gpu(bdf, applied, plan, planned.device.name, pod_uids)
                         for bdf in planned.device.gpus)
            results.append(DeviceResult(planned.pool, planned.device.name, planned.request, applied.required,
                                        applied.label, gpus, applied.describe()))
        outcome = ClaimAttestation(tuple(results), challenge)
        for dev in outcome.devices:
            for gpu in dev.gpus:
                self._audit(plan, pod_uids, dev, gpu)
        self._claim_event(claim, outcome)
        if outcome.blocking:
            self._record_rejection(plan, outcome)
            reasons = "; ".join(f"{d.device} ({g.bdf}): {', '.join(g.reasons)}"
                                for d in outcome.blocking for g in d.gpus if not g.ok)
            raise AttestationRejectedError(f"GPU attestation rejected: {reasons}")
        return outcome

    # ---- the guest path -------------------------------------------------------------------------------------------

    def _mint_challenge(self) -> Challenge:
        if not self.settings.service_url:
            raise AttestationRejectedError(
                "the claim requires guest attestation and this node names no verification service "
                "(attestation.service_url)")
        return Challenge.mint(self.node, self.clock(), timedelta(seconds=self.settings.challenge_ttl_seconds))

    def _guest_pending(self, planned: Any, applied: AppliedPolicy, challenge: Challenge) -> DeviceResult:
        """The device's record while its evidence is awaited: the challenge (its hash) and the identities the node
        recorded for its GPUs (from discovery or a pre-flight attestation, before CC mode went on), if any."""
        expected = []
        for bdf in planned.device.gpus:
            known = self.identities.get(bdf)
            expected.append({"bdf": bdf, "ueid": known.ueid if known else None,
                             "identity": f"recorded ({known.learned_from} at {known.learned_at})" if known
                             else "unknown: trust on first use"})
        record: dict[str, Any] = {**challenge.record(), "gpus": expected}
        if any(g["ueid"] is None for g in expected):
            # An identity taken on first use must not be one this node knows for another PCI device.
            mine = set(planned.device.gpus)
            record["knownElsewhere"] = sorted(k.ueid for b, k in self.identities.all().items() if b not in mine)
        gpus = tuple(GpuResult(bdf, False, (), "guest", evidence=GUEST, nonce_ours=True) for bdf in planned.device.gpus)
        return DeviceResult(planned.pool, planned.device.name, planned.request, applied.required, applied.label, gpus,
                            applied.describe(), challenge=record)

    def guest_outcome(self, plan: ClaimPlan, challenge: Challenge) -> ClaimAttestation:
        """The pending guest records of `plan` for an existing challenge (a repeated prepare re-records them)."""
        results = [self._guest_pending(planned, self.applied_for(req), challenge)
                   for planned, req in self._wanted(plan) if self.applied_for(req).evidence == GUEST_EVIDENCE]
        return ClaimAttestation(tuple(results), challenge)

    def guest_env(self, namespace: str, name: str, uid: str, devices: Sequence[str], challenge: Challenge
                  ) -> tuple[str, ...]:
        """What the container needs to attest from inside the VM: the challenge, the claim, the service and its CA.

        The CA file is read at each prepare (an admin may rotate it); its PEM text travels in the env, since no host
        file is shared into a confidential guest."""
        ca = ""
        if self.settings.service_ca is not None:
            try:
                ca = self.settings.service_ca.read_text(encoding="ascii").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise AttestationRejectedError(
                    f"cannot read the verification service's CA {self.settings.service_ca}: {e}") from e
        env = [f"{ENV_CHALLENGE}={challenge.nonce.hex()}", f"{ENV_CLAIM_NAMESPACE}={namespace}",
               f"{ENV_CLAIM_NAME}={name}", f"{ENV_CLAIM_UID}={uid}", f"{ENV_DEVICES}={','.join(devices)}",
               f"{ENV_SERVICE_URL}={self.settings.service_url}"]
        if ca:
            env.append(f"{ENV_SERVICE_CA}={ca}")
        return tuple(env)

    def learn_from_guest_verdict(self, entry: Any) -> None:
        """Record the identities a guest verdict took on first use for this claim's GPUs (read from the claim, best
        effort: a claim already deleted teaches nothing), so the next challenge for those PCI devices names them."""
        try:
            claim = self.kube.get_resource_claim(entry.namespace, entry.name)
        except ApiError:
            return
        if (claim.get("metadata") or {}).get("uid") != entry.uid:
            return
        ours = {(d.pool, d.device): d for d in entry.devices}
        for status in (claim.get("status") or {}).get("devices") or []:
            device = ours.get((status.get("pool"), status.get("device")))
            data = ((status.get("data") or {}).get("attestation") or {}) if status.get("driver") == self.driver else {}
            if device is None or data.get("evidence") != GUEST or data.get("ok") is not True:
                continue
            members = set(device.members) | set(device.original_drivers)
            for gpu in data.get("gpus") or []:
                bdf, ueid = gpu.get("bdf"), gpu.get("ueid")
                if bdf in members and ueid and str(gpu.get("identity", "")).startswith(
                        "trust on first use (no identity was recorded"):  # one GPU: the identity is this device's
                    self.identities.learn(str(bdf), str(ueid), "guest attestation, trust on first use", self.clock())

    def _evidence(self, bdf: str, req: AppliedPolicy) -> tuple[Evidence, str]:
        provider = self.provider
        if provider is None:
            raise AttestationRejectedError("no evidence provider is configured on this node")
        if provider.needs_host_driver:
            mode = self.host.cc_mode_of(bdf)
            if mode in HIDDEN_FROM_HOST:
                raise AttestationRejectedError(
                    f"GPU is in CC mode {mode!r}: it answers attestation requests only to the driver inside the "
                    "confidential VM, so the host cannot attest it; use the guest attestation path (a DeviceClass "
                    "whose attestation section sets `evidence: guest`)")
            driver = self.host.driver_of(bdf)
            if driver is not None and driver.startswith("vfio"):
                return self._evidence_on_vfio(bdf, driver, req, provider)
        nonce = os.urandom(32)
        return provider.collect(bdf, nonce), provider.name

    def _nonce_ours(self, source: str) -> bool:
        """Did this prepare choose the nonce the evidence answers? Not for discovery or directory evidence."""
        return self.provider is not None and self.provider.takes_nonce and source != "discovery"

    def _evidence_on_vfio(
        self, bdf: str, driver: str, req: AppliedPolicy, provider: EvidenceProvider
    ) -> tuple[Evidence, str]:
        mode = req.when_bound_to_vfio
        if mode == "refuse":
            raise AttestationRejectedError(
                f"GPU is bound to {driver}; fresh evidence needs the nvidia driver "
                "and the policy refuses older evidence"
            )
        if mode == "rebind":
            if not self.settings.allow_rebind:
                raise AttestationRejectedError(
                    "a temporary rebind to nvidia is not allowed by this node's configuration"
                )
            with self.host.on_host_driver(bdf):
                return provider.collect(bdf, os.urandom(32)), f"{provider.name}+rebind"
        with self._lock:
            cached = self._discovered.get(bdf)
        if cached is None:
            raise AttestationRejectedError(f"GPU is bound to {driver} and no evidence was collected at discovery")
        return cached, "discovery"

    def _attest_gpu(
        self, bdf: str, applied: AppliedPolicy, plan: ClaimPlan, device: str, pod_uids: list[str]
    ) -> GpuResult:
        policy = applied.policy
        try:
            evidence, source = self._evidence(bdf, applied)
        except AttestationRejectedError as e:
            return GpuResult(bdf, False, (str(e),), "none")
        except CcGpuError as e:  # a refused rebind, evidence unavailable: the GPU cannot be judged, so it fails
            return GpuResult(bdf, False, (f"no evidence: {e}",), "none")
        ours = self._nonce_ours(source)
        if not ours and not self.settings.allow_foreign_nonce:
            return GpuResult(bdf, False, (
                f"nonce not ours: {source} evidence answers a nonce this prepare did not choose, so only an "
                "unauthenticated timestamp speaks for its age; this node does not accept such evidence "
                "(attestation.allow_foreign_nonce)",), source, nonce_ours=False)
        verdict = self.verifier.verify(evidence.report, evidence.cert_chain, evidence.nonce, policy,
                                       at=self.clock(), collected_at=evidence.collected_at, rims=evidence.rims)
        if not verdict.ok:
            reasons = tuple(f"{c.name} ({c.detail})" if c.detail else c.name for c in verdict.failed)
            return GpuResult(bdf, False, reasons, source, verdict, evidence.collected_at, nonce_ours=ours)
        try:
            self.identities.check(bdf, verdict.identity.ueid, must_be_known=not ours)
        except IdentityMismatchError as e:
            return GpuResult(bdf, False, (f"x-cc-gpu-device-identity ({e})",), source, verdict,
                             evidence.collected_at, nonce_ours=ours)
        if ours and verdict.identity.ueid:
            self.identities.learn(bdf, verdict.identity.ueid, source, self.clock())
        signer = self._signer()
        extra = {
            "x-cc-gpu-claim-uid": plan.uid,
            "x-cc-gpu-claim": f"{plan.namespace}/{plan.name}",
            "x-cc-gpu-pod-uids": pod_uids,
            "x-cc-gpu-node": self.node,
            "x-cc-gpu-driver": self.driver,
            "x-cc-gpu-device": device,
            "x-cc-gpu-pci-address": bdf,
            "x-cc-gpu-evidence": HOST_PREFLIGHT,
            "x-cc-gpu-evidence-source": source,
            "x-cc-gpu-evidence-collected-at": evidence.collected_at.isoformat(),
            "x-cc-gpu-nonce": "ours" if ours else "not ours",
            "x-cc-gpu-policy": applied.label,
            "x-cc-gpu-policy-applied": applied.describe(),
        }
        token = signer.sign(verdict, extra)
        jti = str(jwt.decode(token, options={"verify_signature": False}).get("jti", ""))
        return GpuResult(bdf, True, (), source, verdict, evidence.collected_at, token, signer.kid, jti, ours)

    # ---- tokens into the container -------------------------------------------------------------------------------

    def write_tokens(self, claim_uid: str, result: DeviceResult | None) -> tuple[tuple[str, ...], tuple[CdiMount, ...]]:
        """The CDI env entries that carry the device's tokens, and (only where the admin asks) read-only file mounts.

        The environment is the channel: it travels inside the OCI spec through the Kata agent into a confidential
        guest, where no host file is shared. Token files are off by default (`token_mount`); when on, they are 0400 in
        a 0700 directory per claim, whose name passed the same check as every per-claim file (`files.safe_child`).
        """
        if result is None or not result.ok:
            return (), ()
        env: list[str] = []
        mounts: list[CdiMount] = []
        for gpu in result.gpus:
            if gpu.token is None:
                continue
            env.append(f"{token_env_name(gpu.bdf)}={gpu.token}")
            if self.settings.token_mount:
                directory = self._claim_token_dir(claim_uid)
                path = directory / f"{gpu_token_name(gpu.bdf)}.jwt"
                write_atomic(path, (gpu.token + "\n").encode("ascii"), mode=0o400)
                mounts.append(CdiMount(str(path), f"{TOKEN_MOUNT_DIR}/{gpu_token_name(gpu.bdf)}.jwt"))
        return tuple(env), tuple(mounts)

    def _claim_token_dir(self, claim_uid: str) -> Path:
        directory = safe_child(self.token_dir, claim_uid)
        self.token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.token_dir, 0o700)
        directory.mkdir(exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)
        return directory

    def remove_tokens(self, claim_uid: str) -> None:
        try:
            directory = safe_child(self.token_dir, claim_uid)
        except UnsafeNameError:
            return  # nothing can have been written under a name that fails the check
        shutil.rmtree(directory, ignore_errors=True)

    def remove_orphan_tokens(self, live_claims: set[str]) -> int:
        if not self.token_dir.is_dir():
            return 0
        removed = 0
        for path in self.token_dir.iterdir():
            if path.is_dir() and path.name not in live_claims:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed

    # ---- audit trail ---------------------------------------------------------------------------------------------

    def _audit(self, plan: ClaimPlan, pod_uids: list[str], dev: DeviceResult, gpu: GpuResult) -> None:
        fields: dict[str, Any] = {
            "audit": "gpu-attestation", "required": dev.required, "evidence": gpu.evidence,
            "result": "awaiting guest evidence" if dev.pending else "accepted" if gpu.ok else "rejected",
            "claim_uid": plan.uid, "claim": f"{plan.namespace}/{plan.name}", "pod_uids": pod_uids, "node": self.node,
            "device": dev.device, "bdf": gpu.bdf, "policy": dev.policy, "evidence_source": gpu.source,
            "failed_checks": list(gpu.reasons),
        }
        if gpu.verdict is not None:
            fields.update({"nonce": gpu.verdict.nonce, "ueid": gpu.verdict.identity.ueid,
                           "driver_version": gpu.verdict.driver_version, "vbios_version": gpu.verdict.vbios_version})
        if gpu.kid:
            fields.update({"kid": gpu.kid, "jti": gpu.jti})
        audit.info("gpu attestation verdict", extra=fields)

    def _claim_event(self, claim: Mapping[str, Any], outcome: ClaimAttestation) -> None:
        meta = claim.get("metadata") or {}
        namespace = str(meta.get("namespace", "default"))
        ok = all(d.ok or d.pending for d in outcome.devices)
        now = now_rfc3339()
        parts = []
        for d in outcome.devices:
            if d.pending:
                parts.append(f"{d.device}: awaiting guest evidence (policy {d.policy})")
            elif d.ok:
                parts.append(f"{d.device}: accepted (policy {d.policy})")
            else:
                reasons = "; ".join(f"{g.bdf}: {', '.join(g.reasons)}" for g in d.gpus if not g.ok)
                parts.append(f"{d.device}: rejected (policy {d.policy}): {reasons}")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'claim')}.", "namespace": namespace},
            "involvedObject": {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "name": meta.get("name"),
                               "namespace": namespace, "uid": meta.get("uid")},
            "reason": "GpuAttested" if ok else "GpuAttestationRejected",
            "message": " | ".join(parts)[:1024],
            "type": "Normal" if ok else "Warning",
            "source": {"component": self.driver, "host": self.node},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._events.submit(self._send_event, namespace, body)

    def _send_event(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.kube.create_event(namespace, body)
        except ApiError as e:
            uid = body["involvedObject"]["uid"]
            log.warning("could not emit attestation event", extra={"claim_uid": uid, "error": str(e)})

    def _record_rejection(self, plan: ClaimPlan, outcome: ClaimAttestation) -> None:
        """`Attested=False` with the reasons on each attested device of the claim (no Ready: nothing was bound)."""
        now = now_rfc3339()
        entries = {(d.pool, d.device): {"driver": self.driver, "pool": d.pool, "device": d.device,
                                        "conditions": [d.condition(now)], "data": d.data()}
                   for d in outcome.devices}
        update_device_status(self.kube, plan.namespace, plan.name, self.driver, entries, uid=plan.uid)
