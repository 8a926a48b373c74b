"""Prepare and unprepare, claim by claim, as a sequence of small named steps over the checkpoint.

Prepare: fetch the claim, plan it (`claims.py`), pass the RuntimeClass gate (`gate.py`), then under the locks of the
claim's IOMMU groups only: read the GPUs' CC modes for the gate (a concurrent unprepare of the group cannot be
caught half-way there), checkpoint `PrepareStarted`, bind each group, write the claim's CDI spec (and the pod's
spec for the annotation path), checkpoint `PrepareCompleted`. A claim already completed returns the same answer without
touching the host. Unprepare works from the checkpoint alone. Startup reconciliation rolls back half-done prepares,
drops entries of a previous boot and removes CDI specs nobody owns, and never touches a completed claim of this boot.

No node-wide lock: two claims on different groups run in parallel; two operations on one group serialise on the
group's lock file, also across the two processes of a rolling update.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cc_gpu.dra import cdi
from cc_gpu.dra.checkpoint import (
    EARLY_BOUND,
    PREPARE_COMPLETED,
    PREPARE_STARTED,
    UNPREPARE_STARTED,
    Checkpoint,
    ClaimEntry,
    PreparedDevice,
)
from cc_gpu.dra.claims import ClaimPlan, parse_claim
from cc_gpu.dra.claimstatus import DeviceStatus, apply_device_status
from cc_gpu.dra.crashpoints import crashpoint
from cc_gpu.dra.errors import ClaimError, GateRefusedError
from cc_gpu.dra.gate import GateDecision, GatePolicy, PodView, check_cc_modes, decide
from cc_gpu.dra.iommu import IommuModeRefusedError, choose_mode
from cc_gpu.dra.locks import GroupLocks
from cc_gpu.dra.ports import GpuView, HostPort
from cc_gpu.errors import CcGpuError
from cc_gpu.files import remove_stale_temps
from cc_gpu.kube.api import KubeApi
from cc_gpu.kube.errors import ApiError, NotFoundError

if TYPE_CHECKING:
    from cc_gpu.dra.attestation import AttestationEngine
    from cc_gpu.dra.attestresult import ClaimAttestation

log = logging.getLogger("cc_gpu.dra.state")


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    uid: str
    name: str


@dataclass(frozen=True)
class ResultDevice:
    """One device of a prepare answer, as the kubelet wants it."""

    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]


@dataclass
class DeviceState:
    """The plugin's prepare/unprepare engine for one node."""

    driver: str
    node_name: str
    host: HostPort
    kube: KubeApi
    checkpoint: Checkpoint
    cdi_writer: cdi.CdiWriter
    locks: GroupLocks
    policy: GatePolicy = field(default_factory=GatePolicy)
    attestation: AttestationEngine | None = None  # None: claims that require attestation are refused
    kata_version: tuple[int, int, int] | None = None  # the node's Kata release, read at startup; None: unknown
    # The Kata check of one handler for (gpus, functions): the failing verdict, or None (`katacheck.check_handler`);
    # None: the check is off. Run by the early bind only (a prepare's pod is already on the node).
    kata_check: Callable[[str, int, int], str | None] | None = None
    _inventory: dict[str, GpuView] = field(default_factory=dict)
    _inventory_lock: threading.Lock = field(default_factory=threading.Lock)
    _boot_id: str = ""
    _early_attested: dict[str, ClaimAttestation | None] = field(default_factory=dict)

    @property
    def pool(self) -> str:
        return self.node_name

    def set_inventory(self, devices: Sequence[GpuView]) -> None:
        with self._inventory_lock:
            self._inventory = {d.name: d for d in devices}

    def inventory(self) -> dict[str, GpuView]:
        with self._inventory_lock:
            return dict(self._inventory)

    @property
    def boot_id(self) -> str:
        if not self._boot_id:
            self._boot_id = self.host.boot_id()
        return self._boot_id

    # ---- prepare -------------------------------------------------------------------------------------------------

    def prepare(self, ref: ClaimRef) -> list[ResultDevice]:
        """Prepare one claim; raise a `CcGpuError` subclass naming the reason when it cannot be."""
        claim = self._get_claim(ref)
        plan = parse_claim(claim, ref.uid, self.driver, self.pool, self.inventory())
        done = self.checkpoint.get(ref.uid)
        completed = done is not None and done.state == PREPARE_COMPLETED and done.boot_id == self.boot_id
        # The gate runs on every prepare, also of a claim prepared before (it only reads): the claim's consumers may
        # have changed since, and a repeated prepare must not hand out what a first one would refuse. The CC modes
        # are checked before the bind, under the groups' locks; a bound GPU's BAR is never read again.
        decision = self._gate(claim, plan)
        if done is not None and completed:
            self._ensure_challenge_recorded(ref, claim, plan, done)
            return self._answer(done)
        modes = self._iommu_modes(claim, plan, decision)
        groups = sorted({d.device.iommu_group for d in plan.devices})
        with self.locks.hold(groups):
            existing = self.checkpoint.get(ref.uid)
            if existing is not None and existing.state == PREPARE_COMPLETED and existing.boot_id == self.boot_id:
                return self._answer(existing)
            adopted = self._adopt_early(existing, plan)
            if adopted is not None:
                return self._finish_early(ref, claim, adopted)
            if existing is not None:
                self._rollback(existing)
            self._gate_cc(claim, plan, decision)
            attested = self._step_attest(claim, plan)  # before anything changes: a rejected GPU stays with the host
            entry = self._step_started(plan, decision.pod, attested)
            entry = self._step_bind(entry, modes, decision.confidential)
            entry = self._step_cdi(entry, attested)
            self._step_completed(entry)
        self._record_ready(ref, entry, attested, claim)
        return self._answer(entry)

    def _ensure_challenge_recorded(self, ref: ClaimRef, claim: Mapping[str, Any], plan: ClaimPlan,
                                   done: ClaimEntry) -> None:
        """A plugin that crashed after completing a guest-attested prepare but before recording it leaves the claim
        without its challenge record; the kubelet's retry records it (from the checkpoint), so the guest's
        submission finds its claim. Nothing is written when the record is there (also when already consumed)."""
        if not done.challenge or self.attestation is None:
            return
        from cc_gpu.dra.challenge import Challenge, matches  # noqa: PLC0415

        challenge = Challenge.from_checkpoint(done.challenge)
        for status in (claim.get("status") or {}).get("devices") or []:
            record = ((status.get("data") or {}).get("attestation") or {}).get("challenge")
            if status.get("driver") == self.driver and isinstance(record, Mapping) and matches(record,
                                                                                                challenge.nonce):
                return
        self._record_ready(ref, done, self.attestation.guest_outcome(plan, challenge), claim)

    def _get_claim(self, ref: ClaimRef) -> Mapping[str, Any]:
        try:
            return self.kube.get_resource_claim(ref.namespace, ref.name)
        except NotFoundError as e:
            raise ClaimError(f"claim {ref.namespace}/{ref.name} not found") from e

    def _fresh_cc_modes(self, plan: ClaimPlan) -> dict[str, str]:
        """The CC mode of each planned device as the host reports it now, not as last published."""
        fresh = {d.name: d for d in self.host.devices()}
        self.set_inventory(list(fresh.values()))
        modes = {}
        for d in plan.devices:
            if d.device.name not in fresh:
                raise ClaimError(f"device {d.device.name} is no longer present on this node")
            modes[d.device.name] = fresh[d.device.name].cc_mode
        return modes

    def _gate(self, claim: Mapping[str, Any], plan: ClaimPlan) -> GateDecision:
        """The RuntimeClass and TEE part of the gate; the CC modes follow under the locks (`_gate_cc`)."""
        pod = self._pod_view(plan.namespace, plan.pod)
        try:
            return decide(pod, self.policy, self.host.tee_kinds(), {})
        except GateRefusedError as e:
            self._event(claim, "PrepareRefused", str(e))
            raise

    def _gate_cc(self, claim: Mapping[str, Any], plan: ClaimPlan, decision: GateDecision) -> None:
        """The CC-mode part of the gate, read while the caller holds the groups' locks."""
        if not (decision.confidential and self.policy.require_cc_mode):
            return
        try:
            check_cc_modes(decision, self.policy, self._fresh_cc_modes(plan))
        except GateRefusedError as e:
            self._event(claim, "PrepareRefused", str(e))
            raise

    def _iommu_modes(self, claim: Mapping[str, Any], plan: ClaimPlan, decision: GateDecision) -> dict[str, str]:
        """Device -> the VFIO interface to bind it with (`iommu.py`); refused before anything changes on the node."""
        try:
            return {d.device.name: choose_mode(d.config.iommu_mode, confidential=decision.confidential,
                                               node_iommufd=d.device.iommufd, kata_version=self.kata_version,
                                               device=d.device.name)
                    for d in plan.devices}
        except IommuModeRefusedError as e:
            self._event(claim, "PrepareRefused", str(e))
            raise

    def _pod_view(self, namespace: str, entry: Mapping[str, Any]) -> PodView:
        ref = f"{namespace}/{entry.get('name')}"
        try:
            pod = self.kube.get_pod(namespace, str(entry.get("name")))
        except NotFoundError:
            return PodView(ref, found=False, runtime_class_name=None)
        if entry.get("uid") and (pod.get("metadata") or {}).get("uid") != entry.get("uid"):
            return PodView(ref, found=False, runtime_class_name=None)
        rc_name = (pod.get("spec") or {}).get("runtimeClassName")
        runtime_class = None
        if rc_name:
            try:
                runtime_class = self.kube.get_runtime_class(rc_name)
            except NotFoundError:
                runtime_class = None
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        return PodView(ref, True, rc_name, runtime_class, dict(annotations))

    def _step_attest(self, claim: Mapping[str, Any], plan: ClaimPlan) -> ClaimAttestation | None:
        if self.attestation is not None:
            return self.attestation.attest_claim(claim, plan)
        from cc_gpu.dra.attestcfg import SECTION, request_of  # noqa: PLC0415

        if any(request_of(d.config.extra).required for d in plan.devices if SECTION in d.config.extra):
            raise ClaimError("the claim requires GPU attestation and this node has no attestation configured")
        return None

    def _step_started(self, plan: ClaimPlan, pod: PodView, attested: ClaimAttestation | None = None) -> ClaimEntry:
        pod_device = cdi.pod_device_from_annotation(pod.annotations.get(cdi.POD_ANNOTATION)) or ""
        pod_uid = str(plan.pod.get("uid", ""))
        if pod_device and pod_device != cdi.POD_DEVICE_PREFIX + pod_uid:
            # The guard policy admits only the pod's own device; anything else here means it was bypassed.
            raise ClaimError(f"pod {pod.ref} names CDI device {pod_device!r} in {cdi.POD_ANNOTATION}, not its own "
                             f"({cdi.POD_DEVICE_PREFIX}{pod_uid}); refusing to define it")
        devices = tuple(
            PreparedDevice(
                request=d.request,
                pool=d.pool,
                device=d.device.name,
                iommu_group=d.device.iommu_group,
                members=d.device.members,
                reset_on_release=d.config.reset_on_release != "never",
            )
            for d in plan.devices
        )
        entry = ClaimEntry(
            uid=plan.uid,
            namespace=plan.namespace,
            name=plan.name,
            state=PREPARE_STARTED,
            boot_id=self.boot_id,
            devices=devices,
            pod_uid=pod_uid,
            pod_cdi_device=pod_device,
            challenge=attested.guest_challenge.checkpoint() if attested and attested.guest_challenge else {},
        )
        self.checkpoint.put(entry)
        crashpoint("prepare-after-started")
        return entry

    def _step_bind(self, entry: ClaimEntry, modes: Mapping[str, str], confidential: bool) -> ClaimEntry:
        bound: list[PreparedDevice] = []
        try:
            for dev in entry.devices:
                result = self.host.bind(dev.iommu_group, entry.uid, modes[dev.device])
                if confidential and modes[dev.device] == "iommufd" and result.mode != "iommufd":
                    raise IommuModeRefusedError(  # the kernel lost /dev/iommu between discovery and bind
                        f"device {dev.device}: bound as {result.mode}, but a confidential pod needs an iommufd cdev")
                name = cdi.device_name(entry.uid, dev.device)
                bound.append(
                    replace(
                        dev,
                        original_drivers=dict(result.original_drivers),
                        device_nodes=result.nodes,
                        cdi_ids=(cdi.qualified(name),),
                    )
                )
                crashpoint("prepare-after-bind-group")
        except CcGpuError:
            self._rollback(entry)
            raise
        crashpoint("prepare-after-bind")
        return replace(entry, devices=tuple(bound))

    def _step_cdi(self, entry: ClaimEntry, attested: ClaimAttestation | None = None) -> ClaimEntry:
        try:
            devices = []
            for d in entry.devices:
                env: tuple[str, ...] = ()
                mounts: tuple[cdi.CdiMount, ...] = ()
                if attested is not None and self.attestation is not None:
                    result = attested.for_device(d.pool, d.device)
                    env, mounts = self.attestation.write_tokens(entry.uid, result)
                    if result is not None and result.pending and attested.guest_challenge is not None:
                        guest = tuple(r.device for r in attested.devices if r.pending)
                        env += self.attestation.guest_env(entry.namespace, entry.name, entry.uid, guest,
                                                          attested.guest_challenge)
                devices.append(cdi.CdiDevice(cdi.device_name(entry.uid, d.device), d.device_nodes, env, mounts))
            self.cdi_writer.write_claim(entry.uid, devices)
        except CcGpuError:
            self._rollback(entry)
            raise
        crashpoint("prepare-after-cdi")
        return entry

    def _step_completed(self, entry: ClaimEntry) -> None:
        done = replace(entry, state=PREPARE_COMPLETED)
        self.checkpoint.put(done)
        crashpoint("prepare-after-completed")
        if done.pod_cdi_device:
            self._refresh_pod_spec(done.pod_uid, done.pod_cdi_device)

    def _answer(self, entry: ClaimEntry) -> list[ResultDevice]:
        return [ResultDevice((d.request,), d.pool, d.device, d.cdi_ids) for d in entry.devices]

    # ---- early bind (binding conditions: `binding.py`) ------------------------------------------------------------

    def early_bind(self, claim: Mapping[str, Any]) -> ClaimEntry:
        """Bind an allocated claim's groups before its pod lands on the node; checkpointed as `EarlyBound`.

        Runs everything of a prepare that needs no pod on the node: the claim checks, the RuntimeClass gate (the pod
        exists, only unbound), the IOMMU-mode choice, the CC modes, pre-flight attestation, the bind. Raises
        `EarlyBindFailed` naming the device when a device-specific step failed (its bind, attestation), else the
        step's own error; nothing stays bound either way. Idempotent: a claim already bound or prepared is left alone.
        """
        meta = claim.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        plan = parse_claim(claim, uid, self.driver, self.pool, self.inventory())
        done = self.checkpoint.get(uid)
        if done is not None and self._bound_as_planned(done, plan):
            return done
        decision = self._gate(claim, plan)
        self._early_kata_check(claim, plan, decision)
        modes = self._iommu_modes(claim, plan, decision)
        groups = sorted({d.device.iommu_group for d in plan.devices})
        with self.locks.hold(groups):
            existing = self.checkpoint.get(uid)
            if existing is not None and self._bound_as_planned(existing, plan):
                return existing
            if existing is not None:  # a bind of an earlier allocation of this claim, or a half-done one
                self._rollback(existing)
            self._gate_cc(claim, plan, decision)
            try:
                attested = self._step_attest(claim, plan)
            except CcGpuError as e:
                from cc_gpu.dra.attestation import AttestationRejectedError  # noqa: PLC0415 (as `_step_attest`)

                if isinstance(e, AttestationRejectedError):  # the GPUs' evidence failed: quarantine them
                    raise EarlyBindFailed(tuple(d.device.name for d in plan.devices), e) from e
                raise
            entry = self._step_started(plan, decision.pod, attested)
            entry = self._step_early_bind(entry, modes, decision.confidential)
            entry = replace(entry, state=EARLY_BOUND)
            self.checkpoint.put(entry)
            self._early_attested[uid] = attested  # under the locks: a prepare waiting on them finds it
        return entry

    def _early_kata_check(self, claim: Mapping[str, Any], plan: ClaimPlan, decision: GateDecision) -> None:
        """The node's Kata check for the pod's handler and this claim's GPUs; refuses the claim when it fails."""
        if self.kata_check is None:
            return
        from cc_gpu.dra.katacheck import KataCheckFailedError  # noqa: PLC0415 (kata checks load only when used)

        verdict = self.kata_check(decision.handler, len(plan.devices), sum(d.device.functions for d in plan.devices))
        if verdict is not None:
            message = (f"the node's Kata configuration for handler {decision.handler!r} cannot carry this claim's "
                       f"GPUs into the VM: {verdict}")
            self._event(claim, "PrepareRefused", message)
            raise KataCheckFailedError(message)

    def _bound_as_planned(self, entry: ClaimEntry | None, plan: ClaimPlan) -> bool:
        """Whether `entry` already holds exactly the planned devices, bound early or prepared, in this boot."""
        return (entry is not None and entry.boot_id == self.boot_id
                and entry.state in (EARLY_BOUND, PREPARE_COMPLETED)
                and sorted((d.device, d.request) for d in entry.devices)
                == sorted((d.device.name, d.request) for d in plan.devices))

    def _step_early_bind(self, entry: ClaimEntry, modes: Mapping[str, str], confidential: bool) -> ClaimEntry:
        """`_step_bind` device by device, so a failure names the device that failed (for its quarantine)."""
        bound: list[PreparedDevice] = []
        for dev in entry.devices:
            try:
                bound += self._step_bind(replace(entry, devices=(dev,)), modes, confidential).devices
            except CcGpuError as e:
                if bound:
                    self._rollback(replace(entry, devices=tuple(bound)))
                else:
                    self.checkpoint.drop(entry.uid)
                raise EarlyBindFailed((dev.device,), e) from e
        return replace(entry, devices=tuple(bound))

    def probe_bind(self, device: str) -> bool:
        """A quarantine's check of a failed bind: bind the idle group to vfio-pci and give it back at once.

        True when both worked. Nothing is probed while any claim holds the group (the lock, and the host's bind
        records): that is not a pass, the GPU stays held for another period.
        """
        view = self.inventory().get(device)
        if view is None:
            return False
        group = view.iommu_group
        owner = f"quarantine-probe-{device}"
        with self.locks.hold([group]):
            if group in self.host.bound_groups():
                return False
            try:
                self.host.bind(group, owner, "iommufd" if view.iommufd else "legacy")
            except CcGpuError as e:
                log.info("quarantine probe bind failed", extra={"device": device, "error": str(e)})
                self.host.restore(group, owner, reset=False)
                return False
            self.host.restore(group, owner, reset=False)
        return True

    def reattest(self, claim: Mapping[str, Any], device: str) -> bool:
        """A quarantine's check of a rejected pre-flight attestation: attest the GPU again as the claim asked (no
        claim event, no checkpoint); True when the verdict passes now (a RIM published since, for one)."""
        if self.attestation is None:
            return True  # attestation was turned off since: nothing left to check
        uid = str((claim.get("metadata") or {}).get("uid", ""))
        plan = parse_claim(claim, uid, self.driver, self.pool, self.inventory())
        plan = replace(plan, devices=tuple(d for d in plan.devices if d.device.name == device))
        return self.attestation.recheck(plan)

    def release_early(self, uid: str) -> bool:
        """Give an `EarlyBound` claim's groups back to their host drivers (its pod never came); True if it was one."""
        entry = self.checkpoint.get(uid)
        if entry is None or entry.state != EARLY_BOUND:
            return False
        with self.locks.hold(d.iommu_group for d in entry.devices):
            entry = self.checkpoint.get(uid)
            if entry is None or entry.state != EARLY_BOUND:
                return False
            self._rollback(entry)
        self._early_attested.pop(uid, None)
        return True

    def warn(self, claim: Mapping[str, Any], reason: str, message: str) -> None:
        """A Warning Event on the claim (for the early binder: a failed early bind, a quarantined GPU)."""
        self._event(claim, reason, message)

    def early_bound(self) -> dict[str, ClaimEntry]:
        """The claims bound early and not yet prepared by the kubelet, by UID."""
        return {uid: e for uid, e in self.checkpoint.read().items() if e.state == EARLY_BOUND}

    def _adopt_early(self, existing: ClaimEntry | None, plan: ClaimPlan) -> ClaimEntry | None:
        """The early-bound entry the kubelet's prepare can finish as is: same boot, same devices, groups still ours."""
        if existing is None or existing.state != EARLY_BOUND or not self._bound_as_planned(existing, plan):
            return None  # none, or deallocated and allocated again elsewhere since the early bind
        if existing.uid not in self._early_attested:
            # Bound early by another process (a rolling update's other pod): its attestation verdict (token, guest
            # challenge) lives there, not in the checkpoint, so finishing here would hand out an unattested GPU.
            return None
        owners = self.host.bound_groups()
        if any(owners.get(d.iommu_group) != existing.uid for d in existing.devices):
            return None  # something undid the bind meanwhile: bind again the normal way
        return existing

    def _finish_early(self, ref: ClaimRef, claim: Mapping[str, Any], entry: ClaimEntry) -> list[ResultDevice]:
        """The rest of a prepare for an early-bound claim (caller holds the locks): CDI spec, completed, status."""
        attested = self._early_attested.pop(entry.uid, None)
        entry = self._step_cdi(replace(entry, state=PREPARE_STARTED), attested)
        self._step_completed(entry)
        self._record_ready(ref, entry, attested, claim)
        return self._answer(entry)

    # ---- unprepare -----------------------------------------------------------------------------------------------

    def unprepare(self, ref: ClaimRef) -> None:
        """Undo a prepare from the checkpoint; a claim it does not know is released from the host's bind records."""
        entry = self.checkpoint.get(ref.uid)
        if entry is None:
            self._release_unrecorded(ref.uid)
            return
        if entry.challenge and self.attestation is not None:
            self.attestation.learn_from_guest_verdict(entry)
        with self.locks.hold(d.iommu_group for d in entry.devices):
            entry = self.checkpoint.get(ref.uid)
            if entry is None:
                return
            if entry.state == PREPARE_COMPLETED:
                # From here on a restart finishes the unprepare instead of keeping a claim that is half undone.
                entry = replace(entry, state=UNPREPARE_STARTED)
                self.checkpoint.put(entry)
                crashpoint("unprepare-after-marked")
            self._rollback(entry)

    def _release_unrecorded(self, uid: str) -> None:
        """Restore groups the host layer records as held by `uid` although the checkpoint has no entry for it.

        Normally there are none (a no-op for an unknown claim). After a corrupt checkpoint was replaced by its previous
        generation, the newest prepare may be missing from it; its devices are found here instead of being stranded.
        """
        groups = sorted(g for g, owner in self.host.bound_groups().items() if owner == uid)
        if not groups:
            return
        log.warning("releasing groups the checkpoint does not record", extra={"claim_uid": uid, "groups": groups})
        with self.locks.hold(groups):
            for group in groups:
                self.host.restore(group, uid, reset=True)
            self.cdi_writer.remove_claim(uid)

    def _rollback(self, entry: ClaimEntry) -> None:
        """Restore every device of `entry`, remove its CDI spec and its checkpoint entry (caller holds the locks)."""
        for dev in entry.devices:
            self.host.restore(dev.iommu_group, entry.uid, reset=dev.reset_on_release)
        crashpoint("unprepare-after-restore")
        self.cdi_writer.remove_claim(entry.uid)
        if self.attestation is not None:
            self.attestation.remove_tokens(entry.uid)
        crashpoint("unprepare-after-cdi-removed")
        self.checkpoint.drop(entry.uid)
        crashpoint("unprepare-after-dropped")
        if entry.pod_cdi_device:
            self._refresh_pod_spec(entry.pod_uid, entry.pod_cdi_device)

    # ---- the per-pod CDI spec (released-Kata annotation path) -----------------------------------------------------

    def _refresh_pod_spec(self, pod_uid: str, pod_device: str) -> None:
        """Rewrite the pod's spec from the checkpoint, under its lock, so concurrent claims of one pod never race."""

        def write(claims: dict[str, ClaimEntry]) -> None:
            nodes: list[str] = []
            for c in sorted(claims.values(), key=lambda c: c.uid):
                if c.pod_uid == pod_uid and c.pod_cdi_device == pod_device and c.state == PREPARE_COMPLETED:
                    nodes += [n for d in c.devices for n in d.device_nodes if n not in nodes]
            if nodes:
                self.cdi_writer.write_pod(pod_device, nodes)
            else:
                self.cdi_writer.remove_pod(pod_device)

        self.checkpoint.while_locked(write)

    # ---- startup reconciliation ----------------------------------------------------------------------------------

    def reconcile(self) -> dict[str, int]:
        """Bring checkpoint, host and CDI root into agreement after a (re)start; return what was done, by kind."""
        counts = {"kept": 0, "rolled_back": 0, "dropped_other_boot": 0, "orphan_specs_removed": 0}
        entries = list(self.checkpoint.read().values())
        recovered = self.checkpoint.recovered_from is not None
        bound = self.host.bound_groups() if recovered else {}
        for entry in entries:
            if recovered and entry.boot_id == self.boot_id:
                self._reconcile_recovered(entry, bound, counts)
            elif entry.boot_id != self.boot_id:
                # The reboot already undid every binding; the kubelet re-prepares claims of pods still running.
                self.cdi_writer.remove_claim(entry.uid)
                self.checkpoint.drop(entry.uid)
                if entry.pod_cdi_device:
                    self._refresh_pod_spec(entry.pod_uid, entry.pod_cdi_device)
                counts["dropped_other_boot"] += 1
            elif entry.state != PREPARE_COMPLETED:
                try:
                    with self.locks.hold(d.iommu_group for d in entry.devices):
                        current = self.checkpoint.get(entry.uid)
                        if current is not None and current.state != PREPARE_COMPLETED:
                            self._rollback(current)
                            counts["rolled_back"] += 1
                except CcGpuError as e:
                    # Keep serving: the entry stays, the kubelet's next unprepare (or prepare) retries the rollback.
                    log.error("rollback at startup failed", extra={"claim_uid": entry.uid, "error": str(e)})
                    counts["rollback_failed"] = counts.get("rollback_failed", 0) + 1
                crashpoint("reconcile-after-rollback")
            else:
                counts["kept"] += 1
        claims = self.checkpoint.read()
        if self.attestation is not None:
            counts["orphan_tokens_removed"] = self.attestation.remove_orphan_tokens(set(claims))
        pod_devices = {c.pod_cdi_device for c in claims.values() if c.pod_cdi_device}
        for path in self.cdi_writer.owned_files():
            owner = cdi.CdiWriter.id_of(path)
            if owner not in claims and owner not in pod_devices:
                path.unlink(missing_ok=True)
                counts["orphan_specs_removed"] += 1
        counts["temp_files_removed"] = self.cdi_writer.remove_stale_temps()
        counts["temp_files_removed"] += remove_stale_temps(self.checkpoint.path.parent, self.checkpoint.path.name)
        crashpoint("reconcile-after-orphans")
        # A crash between a checkpoint write and the per-pod spec refresh leaves that spec stale: rebuild them all.
        for pod_uid, pod_device in sorted({(c.pod_uid, c.pod_cdi_device) for c in claims.values() if c.pod_cdi_device}):
            self._refresh_pod_spec(pod_uid, pod_device)
        return counts

    def _reconcile_recovered(self, entry: ClaimEntry, bound: Mapping[int, str], counts: dict[str, int]) -> None:
        """Startup after the checkpoint fell back to its previous generation, which may be one update behind.

        Its half-done entries may in truth have completed, with a VM now using the devices: they are kept, never
        rolled back here; the kubelet's retry (prepare or unprepare) settles them. A completed entry whose groups the
        host no longer records as held by the claim was unprepared after that generation was written: finish it.
        """
        groups = {d.iommu_group for d in entry.devices}
        if entry.state == PREPARE_COMPLETED and any(bound.get(g) != entry.uid for g in groups):
            with self.locks.hold(groups):
                self._rollback(entry)
            counts["rolled_back"] += 1
        else:
            counts["kept"] += 1

    # ---- claim status and events ---------------------------------------------------------------------------------

    def _record_ready(
        self, ref: ClaimRef, entry: ClaimEntry, attested: ClaimAttestation | None = None,
        claim: Mapping[str, Any] | None = None,
    ) -> None:
        """Apply `Ready` (and `Attested` with its data) to this driver's status.devices entries; failure is logged.

        Server-side apply of only these entries (`claimstatus.py`): the allocation and other writers' entries and
        conditions are never sent, so nothing another writer set is lost and the allocation is never re-serialised.
        """
        now = _now()
        devices = []
        for d in entry.devices:
            verdict = attested.for_device(d.pool, d.device) if attested is not None else None
            ready = {
                "type": "Ready",
                "status": "True",
                "reason": "BoundToVfio",
                "message": f"IOMMU group {d.iommu_group} bound to vfio-pci",
                "lastTransitionTime": now,
            }
            conditions = (ready, verdict.condition(now)) if verdict is not None else (ready,)
            devices.append(DeviceStatus(d.pool, d.device, conditions, verdict.data() if verdict is not None else None))
        uid = str(((claim or {}).get("metadata") or {}).get("uid") or ref.uid)
        apply_device_status(self.kube, ref.namespace, ref.name, self.driver, devices, uid=uid, current=claim)

    def _event(self, claim: Mapping[str, Any], reason: str, message: str) -> None:
        meta = claim.get("metadata") or {}
        namespace = str(meta.get("namespace", "default"))
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'claim')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaim",
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning",
            "source": {"component": self.driver, "host": self.node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.kube.create_event(namespace, body)
        except ApiError as e:
            log.warning("could not emit event", extra={"claim_uid": meta.get("uid"), "error": str(e)})


class EarlyBindFailed(CcGpuError):
    """An early bind or pre-flight check failed because of these devices (they are quarantined): `cause` says why."""

    def __init__(self, devices: tuple[str, ...], cause: CcGpuError) -> None:
        super().__init__(f"{', '.join(devices)}: {cause}")
        self.devices = devices
        self.cause = cause


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
