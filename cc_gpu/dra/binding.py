"""Binding conditions: bind a claim's GPUs to vfio-pci and check them before the scheduler binds the pod.

With `[binding] conditions = true` every published VFIO device names `bindingConditions: [VfioReady]` and
`bindingFailureConditions: [VfioFailed]` (`slices.py`). The kube-scheduler then writes the allocation and waits in
PreBind (polling every 5 s, up to its `bindingTimeout`, 600 s by default) until the claim's `status.devices` say
`VfioReady` is True, or gives up on a True `VfioFailed`: it deallocates the claim and schedules the pod again.

`EarlyBinder` learns of such claims through one watch of the ResourceClaims labelled
`cc-gpu.io/binding-node=<this node>` by the cluster's labeler (`bindlabel.py`; resumable from its resourceVersion,
relisted on 410 and every `resync_seconds`), keeps those allocated from this node's pool with its
conditions pending, and hands them to a bounded pool of workers (`workers` at once; at most `queue_limit` waiting,
newest state per claim). Each runs `DeviceState.early_bind` (claim checks, RuntimeClass gate, IOMMU mode, CC mode,
pre-flight attestation, the bind: everything that needs no pod on the node) and then applies `VfioReady` True, or
`VfioFailed` True with a reason. A device-specific failure (the bind, a foreign device in the group, a rejected
attestation) also quarantines the GPU (`Quarantine`): it is published with a NoSchedule taint before the failure
condition is written, so the scheduler's next attempt picks another GPU. The kubelet's NodePrepareResources then
finds the groups bound and only writes the CDI spec.

Cleanup: a claim that loses its allocation (the scheduler's timeout or a failure deallocates it) or is deleted before
its pod landed is released (its groups back to their host drivers); a relist also releases early binds whose claim
is gone. A restart rolls every early bind back (startup reconciliation) and the relist binds again what still waits.

Why a label: ResourceClaims have no field selector for the allocated node, so a watch of every claim by every node
makes the API server send each claim's events N times; `benchmarks/bind_watch.py` measured that it does not scale
(README "Binding conditions"). One cluster-level watcher labels the claims instead, and each node's watch is
filtered by the server. `[binding] watch_all = true` keeps the unfiltered watch for a cluster without the labeler.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cc_gpu.dra import bindlabel
from cc_gpu.dra.bindcfg import FAILED_CONDITION, READY_CONDITION, BindingSettings
from cc_gpu.dra.claimstatus import DeviceStatus, apply_device_status, field_manager
from cc_gpu.errors import CcGpuError
from cc_gpu.kube.api import KubeApi
from cc_gpu.kube.errors import ApiError, ExpiredError, NotFoundError

if TYPE_CHECKING:
    from cc_gpu.dra.ports import GpuView
    from cc_gpu.dra.state import DeviceState

log = logging.getLogger("cc_gpu.dra.binding")

QUARANTINE_KEY = "cc-gpu.io/quarantine"
"""The NoSchedule taint of a quarantined GPU; its value names the cause (`CAUSES`)."""

CAUSES = {
    "ForeignDeviceError": ("ForeignDevice", "foreign-device"),
    "GroupNotViableError": ("GroupNotViable", "group-not-viable"),
    "SriovActiveError": ("GroupNotViable", "group-not-viable"),
    "BindFailedError": ("BindFailed", "bind-failed"),
    "BindTimeoutError": ("BindFailed", "bind-failed"),
    "GpuInUseError": ("InUse", "in-use"),
    "GroupInUseError": ("InUse", "in-use"),
    "AttestationRejectedError": ("AttestationRejected", "attestation-rejected"),
    "KataCheckFailedError": ("KataCheckFailed", "kata-check-failed"),  # the node's, not the GPU's: no quarantine
}
"""Error type -> (condition reason, taint value). Anything else fails the claim without quarantining the GPU."""


def cause_of(error: BaseException) -> tuple[str, str]:
    return CAUSES.get(type(error).__name__, ("PreflightFailed", "preflight-failed"))


@dataclass
class _Held:
    cause: str  # the taint value
    until: float  # when the cause is checked again (`recheck`), or the quarantine ends (no recheck)
    recheck: Callable[[], bool] | None = None  # after `until`: True lifts it, False holds it another period
    members: frozenset[str] = frozenset()  # foreign device: the group's functions at the failure; lifts when one left


class Quarantine:
    """GPUs held back after a failed early bind or pre-flight check, until their cause is gone.

    Each cause is checked its own way (`review`, on every republish): a group that gained a foreign device is
    released when discovery no longer sees that device in the group (a function present at the failure is gone); a
    failed bind (also a group found not viable, or a GPU a host process held) by a probe bind and unbind of the idle
    group once `seconds` have passed; a rejected pre-flight attestation (a missing RIM among its reasons) by attesting
    the GPU again after `seconds`. A check that fails holds the GPU another period. A cause with no check ends after
    `seconds`. An unhealthy GPU is not held here: discovery taints it itself and the taint goes when health recovers.
    """

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}

    def add(self, device: str, cause: str, recheck: Callable[[], bool] | None = None,
            members: Sequence[str] = ()) -> None:
        with self._lock:
            self._held[device] = _Held(cause, self._clock() + self.seconds, recheck, frozenset(members))
        log.warning("GPU quarantined", extra={"device": device, "cause": cause, "seconds": self.seconds})

    def review(self, devices: Sequence[GpuView]) -> None:
        """Lift what no longer applies: a foreign device gone from the group, a due check that passes."""
        now = self._clock()
        found = {d.name: d for d in devices}
        with self._lock:
            held = dict(self._held)
        for device, entry in held.items():
            if entry.members:
                view = found.get(device)
                if view is not None and not entry.members <= set(view.members):
                    self._lift(device, entry, "the foreign device left the group")
                continue
            if entry.recheck is None or entry.until > now:
                continue
            try:
                passed = entry.recheck()
            except CcGpuError as e:
                log.warning("quarantine check failed", extra={"device": device, "error": str(e)})
                passed = False
            if passed:
                self._lift(device, entry, "its check passed")
            else:
                with self._lock:
                    if self._held.get(device) is entry:
                        entry.until = self._clock() + self.seconds
                log.warning("GPU stays quarantined: its cause persists",
                            extra={"device": device, "cause": entry.cause, "seconds": self.seconds})

    def _lift(self, device: str, entry: _Held, why: str) -> None:
        with self._lock:
            if self._held.get(device) is not entry:
                return
            del self._held[device]
        log.info("GPU quarantine lifted", extra={"device": device, "cause": entry.cause, "why": why})

    def taints(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """Device -> its quarantine taints (key, value); those without a check end by time here."""
        now = self._clock()
        with self._lock:
            for device in [d for d, e in self._held.items() if e.recheck is None and not e.members and e.until <= now]:
                del self._held[device]
                log.info("GPU quarantine ended", extra={"device": device})
            return {d: ((QUARANTINE_KEY, e.cause),) for d, e in self._held.items()}


@dataclass(frozen=True)
class _Work:
    kind: str  # bind | release
    claim: Mapping[str, Any]


class EarlyBinder:
    """The watch of claims and the workers that bind early, set the conditions and release what was abandoned."""

    def __init__(self, state: DeviceState, kube: KubeApi, settings: BindingSettings, quarantine: Quarantine,
                 republish: Callable[[], object]) -> None:
        self.state = state
        self.kube = kube
        self.settings = settings
        self.quarantine = quarantine
        self.republish = republish
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._pending: OrderedDict[str, _Work] = OrderedDict()
        self._busy: set[str] = set()
        self._threads: list[threading.Thread] = []
        self.dropped = 0  # claims pushed out of a full queue (picked up again by the next relist)
        self._known: set[str] = set()
        self.label_selector = "" if settings.watch_all else bindlabel.selector(state.pool)

    # ---- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._watch_loop, name="claim-watch", daemon=True)]
        self._threads += [threading.Thread(target=self._worker, name=f"early-bind-{i}", daemon=True)
                          for i in range(self.settings.workers)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=5)

    # ---- which claims concern this node --------------------------------------------------------------------------

    def _ours(self, claim: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """This node's allocation results of `claim` that wait on our binding conditions."""
        allocation = (claim.get("status") or {}).get("allocation") or {}
        return [r for r in (allocation.get("devices") or {}).get("results") or []
                if r.get("driver") == self.state.driver and r.get("pool") == self.state.pool
                and READY_CONDITION in (r.get("bindingConditions") or [])]

    def _conditions(self, claim: Mapping[str, Any]) -> dict[str, str]:
        """Our condition types on the claim's device entries -> "True" when any entry says so."""
        out: dict[str, str] = {}
        for entry in (claim.get("status") or {}).get("devices") or []:
            if entry.get("driver") == self.state.driver and entry.get("pool") == self.state.pool:
                for c in entry.get("conditions") or []:
                    if c.get("status") == "True":
                        out[str(c.get("type"))] = "True"
        return out

    def classify(self, kind: str, claim: Mapping[str, Any]) -> str | None:
        """What to do about a claim event: bind, release or nothing (None)."""
        uid = str((claim.get("metadata") or {}).get("uid", ""))
        deleting = kind == "DELETED" or (claim.get("metadata") or {}).get("deletionTimestamp")
        if deleting or not self._ours(claim):
            # `_known` (early binds seen or made here) spares a checkpoint read for every claim of the cluster.
            return "release" if uid in self._known and uid in self.state.early_bound() else None
        conditions = self._conditions(claim)
        if FAILED_CONDITION in conditions or not (claim.get("status") or {}).get("reservedFor"):
            return None  # failed (the scheduler deallocates it), or not yet reserved for its pod
        entry = self.state.checkpoint.get(uid)
        if entry is not None and entry.boot_id == self.state.boot_id and READY_CONDITION in conditions:
            return None  # done (early bound or already prepared)
        return "bind"

    # ---- the watch -----------------------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                items, version = self.kube.watchable_resource_claims(self.label_selector)
                self._resync(items)
                deadline = time.monotonic() + self.settings.resync_seconds
                while not self._stop.is_set() and time.monotonic() < deadline:
                    remaining = max(1, int(deadline - time.monotonic()))
                    for event in self.kube.watch_resource_claims(version, remaining, self.label_selector):
                        obj = event["object"]
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                        if event.get("type") != "BOOKMARK":
                            self._offer(str(event.get("type")), obj)
                        if self._stop.is_set():
                            return
                backoff = 1.0
            except ExpiredError:
                continue  # relist at once
            except (ApiError, CcGpuError) as e:
                log.warning("claim watch failed; relisting", extra={"error": str(e), "retry_seconds": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _resync(self, claims: Sequence[Mapping[str, Any]]) -> None:
        with self._cond:  # bounded: what is bound early now, and what is being bound
            self._known = set(self.state.early_bound()) | set(self._busy)
        live = set()
        for claim in claims:
            live.add(str((claim.get("metadata") or {}).get("uid", "")))
            self._offer("ADDED", claim)
        for uid, entry in self.state.early_bound().items():
            if uid not in live:  # deleted while nobody watched
                self._submit(uid, _Work("release", {"metadata": {"uid": uid, "namespace": entry.namespace,
                                                                 "name": entry.name}}))

    def _offer(self, kind: str, claim: Mapping[str, Any]) -> None:
        action = self.classify(kind, claim)
        if action is not None:
            self._submit(str(claim["metadata"]["uid"]), _Work(action, claim))

    def _submit(self, uid: str, work: _Work) -> None:
        with self._cond:
            self._pending.pop(uid, None)
            self._pending[uid] = work  # the newest state of a claim wins
            while len(self._pending) > self.settings.queue_limit:
                self._pending.popitem(last=False)
                self.dropped += 1
            self._cond.notify()

    # ---- the workers ---------------------------------------------------------------------------------------------

    def _take(self) -> tuple[str, _Work] | None:
        with self._cond:
            while not self._stop.is_set():
                for uid in self._pending:
                    if uid not in self._busy:
                        self._busy.add(uid)
                        return uid, self._pending.pop(uid)
                self._cond.wait(0.5)
            return None

    def _worker(self) -> None:
        while (taken := self._take()) is not None:
            uid, work = taken
            try:
                if work.kind == "release":
                    if self.state.release_early(uid):
                        log.info("early bind released: the claim was deallocated or deleted", extra={"claim_uid": uid})
                else:
                    self.bind(work.claim)
            except CcGpuError as e:  # a release that failed: the next relist retries it
                log.error("early bind work failed", extra={"claim_uid": uid, "error": str(e)})
            finally:
                with self._cond:
                    self._busy.discard(uid)
                    self._cond.notify()

    def bind(self, claim: Mapping[str, Any]) -> None:
        """Bind one claim early and say so on it: VfioReady True, or VfioFailed True with the reason."""
        from cc_gpu.dra.state import EarlyBindFailed  # noqa: PLC0415 (state imports this module's users)

        meta = claim.get("metadata") or {}
        where = {"claim": f"{meta.get('namespace')}/{meta.get('name')}", "claim_uid": meta.get("uid")}
        started = time.monotonic()
        self._known.add(str(meta.get("uid")))
        try:
            self.state.early_bind(claim)
        except EarlyBindFailed as e:
            reason, taint = cause_of(e.cause)
            inventory = self.state.inventory()
            for device in e.devices:
                if taint == "foreign-device" and device in inventory:
                    self.quarantine.add(device, taint, members=inventory[device].members)
                elif taint == "attestation-rejected":
                    self.quarantine.add(device, taint, recheck=self._reattest(claim, device))
                elif taint in ("bind-failed", "group-not-viable", "in-use"):
                    self.quarantine.add(device, taint, recheck=self._probe(device))
                else:
                    self.quarantine.add(device, taint)
            self.republish()  # the taint is published before the scheduler learns of the failure
            log.warning("early bind failed; GPU quarantined", extra={**where, "error": str(e)})
            self._say(claim, FAILED_CONDITION, reason, str(e))
            self.state.warn(claim, "GpuQuarantined", f"{e} (quarantined: {QUARANTINE_KEY}={taint}:NoSchedule)")
            return
        except CcGpuError as e:
            log.warning("early bind refused", extra={**where, "error": str(e)})
            self._say(claim, FAILED_CONDITION, cause_of(e)[0], str(e))
            return
        fresh = self._still_allocated(claim)
        if fresh is None:  # the scheduler timed out (or the pod went) while it bound: give the GPUs back now
            if self.state.release_early(str(meta.get("uid"))):
                log.info("early bind released: the claim was deallocated or moved while it bound", extra=where)
            return
        log.info("early bind done", extra={**where, "seconds": round(time.monotonic() - started, 3)})
        self._say(fresh, READY_CONDITION, "BoundToVfio", "IOMMU group bound to vfio-pci, pre-flight checks passed")

    def _probe(self, device: str) -> Callable[[], bool]:
        return lambda: self.state.probe_bind(device)

    def _reattest(self, claim: Mapping[str, Any], device: str) -> Callable[[], bool]:
        return lambda: self.state.reattest(claim, device)

    def _still_allocated(self, claim: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """The claim as stored now, if it still has the allocation that was bound; None when it lost or changed it."""
        meta = claim.get("metadata") or {}
        try:
            fresh = self.kube.get_resource_claim(str(meta.get("namespace")), str(meta.get("name")))
        except NotFoundError:
            return None
        except ApiError:
            return claim  # unknown: say what was done; a deallocation still reaches the watch
        def devices(c: Mapping[str, Any]) -> list[tuple[str, str]]:
            return sorted((str(r.get("request")), str(r.get("device"))) for r in self._ours(c))
        same = (fresh.get("metadata") or {}).get("uid") == meta.get("uid") and devices(fresh) == devices(claim)
        return fresh if same else None

    def _say(self, claim: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        meta = claim.get("metadata") or {}
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        condition = {"type": kind, "status": "True", "reason": reason, "message": message[:1024],
                     "lastTransitionTime": now}
        devices = [DeviceStatus(str(r.get("pool")), str(r.get("device")), (condition,)) for r in self._ours(claim)]
        apply_device_status(self.kube, str(meta.get("namespace")), str(meta.get("name")), self.state.driver, devices,
                            uid=str(meta.get("uid")), current=claim,
                            manager=field_manager(self.state.driver, "binding"))
