"""Watching prepared claims for a consumer the RuntimeClass gate would refuse.

DRA lets a claim be shared: a pod added later to `reservedFor` on the same node gets the prepared claim's CDI ids from
the kubelet without the plugin being asked again, so the gate at prepare cannot see it. Kubernetes offers the plugin
no way to refuse it then; what the plugin can do is notice. On every rescan this reads each claim prepared on this
node and runs the gate's consumer checks again (the reserved pods, their RuntimeClass handlers, the node's TEE; the
CC modes were checked at prepare and the GPUs are bound since). A claim that fails them gets, once per distinct
reason, a Warning Event and an audit log line, and its devices are reported unhealthy through the dra-health service
(the kubelet shows that in the pods' status) until the consumer goes away.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cc_gpu.dra.checkpoint import PREPARE_COMPLETED, ClaimEntry
from cc_gpu.dra.errors import GateRefusedError
from cc_gpu.dra.gate import check_reserved_for, decide
from cc_gpu.kube.errors import ApiError, NotFoundError

log = logging.getLogger("cc_gpu.dra.consumers")
audit = logging.getLogger("cc_gpu.audit")

REASON = "RefusedConsumer"


@dataclass
class ConsumerWatch:
    """Runs the consumer checks for every completed claim; remembers what it reported so each reason is sent once."""

    state: Any  # DeviceState (typed loosely to keep this module free of an import cycle with state.py)
    _reported: dict[str, str] = field(default_factory=dict)  # claim uid -> the last reason reported

    def check(self) -> dict[str, str]:
        """Device name -> why its claim's current consumer would be refused (an empty map: all fine)."""
        out: dict[str, str] = {}
        entries: Mapping[str, ClaimEntry] = self.state.checkpoint.read()
        live = set()
        for entry in entries.values():
            if entry.state != PREPARE_COMPLETED or entry.boot_id != self.state.boot_id:
                continue
            live.add(entry.uid)
            reason = self._refusal(entry)
            if reason is None:
                self._reported.pop(entry.uid, None)
                continue
            for dev in entry.devices:
                out[dev.device] = f"claim {entry.namespace}/{entry.name}: {reason}"
        for uid in set(self._reported) - live:
            del self._reported[uid]
        return out

    def _refusal(self, entry: ClaimEntry) -> str | None:
        try:
            claim = self.state.kube.get_resource_claim(entry.namespace, entry.name)
        except NotFoundError:
            return None  # the claim is going away; unprepare follows
        except ApiError as e:
            log.info("cannot read a prepared claim to check its consumers", extra={"claim_uid": entry.uid,
                                                                                   "error": str(e)})
            return None
        if (claim.get("metadata") or {}).get("uid") != entry.uid:
            return None
        try:
            reserved = (claim.get("status") or {}).get("reservedFor") or []
            pod_entry = check_reserved_for(reserved)
            if entry.pod_uid and pod_entry.get("uid") != entry.pod_uid:
                raise GateRefusedError(
                    f"claim is now reserved for pod {pod_entry.get('name')!r} (uid {pod_entry.get('uid')}), not the "
                    f"pod it was prepared for (uid {entry.pod_uid})"
                )
            pod = self.state._pod_view(entry.namespace, pod_entry)
            decide(pod, self.state.policy, self.state.host.tee_kinds(), {})
        except GateRefusedError as e:
            self._report(claim, entry, str(e))
            return str(e)
        except ApiError as e:  # a pod or RuntimeClass unreadable now: judged again at the next rescan
            log.info("cannot read a prepared claim's consumers", extra={"claim_uid": entry.uid, "error": str(e)})
        return None

    def _report(self, claim: Mapping[str, Any], entry: ClaimEntry, reason: str) -> None:
        if self._reported.get(entry.uid) == reason:
            return
        self._reported[entry.uid] = reason
        audit.warning("prepared claim has a consumer the gate refuses", extra={
            "audit": "refused-consumer", "claim_uid": entry.uid, "claim": f"{entry.namespace}/{entry.name}",
            "node": self.state.node_name, "devices": [d.device for d in entry.devices], "reason": reason})
        self.state._event(claim, REASON, f"a consumer of this prepared claim would be refused: {reason}")
