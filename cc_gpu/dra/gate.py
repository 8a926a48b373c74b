"""The RuntimeClass gate: a VFIO GPU goes only to a pod that will run it inside a confidential Kata VM.

An admission policy on a Pod cannot see the ResourceClaims it references, so the check lives here, at prepare time,
where both the claim's `reservedFor` pods and the node's state are visible. The decision is a pure function of objects
already fetched (pods, RuntimeClasses, TEE state, CC modes); fetching lives in `state.py`. It fails closed: anything
missing or unexpected is a refusal with a reason a human can act on.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cc_gpu.dra.errors import GateRefusedError

DEFAULT_ALLOWED_HANDLERS = ("kata-qemu-nvidia-gpu-snp", "kata-qemu-nvidia-gpu-tdx")
DEFAULT_CONFIDENTIAL_HANDLERS = DEFAULT_ALLOWED_HANDLERS
CC_MODES_OK = ("on", "ppcie")


@dataclass(frozen=True)
class GatePolicy:
    """What the admin allows. `require_cc` applies to confidential handlers only."""

    allowed_handlers: tuple[str, ...] = DEFAULT_ALLOWED_HANDLERS
    confidential_handlers: tuple[str, ...] = DEFAULT_CONFIDENTIAL_HANDLERS
    require_cc_mode: bool = True
    require_tee: bool = True
    # Which TEE a confidential handler needs (`sev-snp` | `tdx`); a handler not listed needs the TEE its name ends
    # with (`-snp`, `-tdx`), and one whose name says neither needs either.
    handler_tees: Mapping[str, str] = field(default_factory=dict)


TEE_KINDS = ("sev-snp", "tdx")


def tee_of_handler(handler: str, policy: GatePolicy) -> str | None:
    """The TEE `handler` needs: from the admin's `handler_tees`, else from its name; None: any TEE."""
    if handler in policy.handler_tees:
        return policy.handler_tees[handler]
    if handler.endswith("-snp"):
        return "sev-snp"
    if handler.endswith("-tdx"):
        return "tdx"
    return None


@dataclass(frozen=True)
class PodView:
    """The facts about one reserved pod the gate needs; `runtime_class` is None when the object does not exist."""

    ref: str  # namespace/name, for messages
    found: bool
    runtime_class_name: str | None
    runtime_class: Mapping[str, Any] | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    """An accepted claim: the pod it goes to and whether its handler is confidential."""

    pod: PodView
    handler: str
    confidential: bool


def check_reserved_for(reserved_for: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The single pod entry of `reservedFor`; refuse anything else (no pod, several pods, a non-pod consumer)."""
    if not reserved_for:
        raise GateRefusedError("claim is not reserved for any pod")
    for entry in reserved_for:
        if entry.get("resource") != "pods" or entry.get("apiGroup", "") not in ("", None):
            raise GateRefusedError(
                f"claim is reserved for {entry.get('resource')!r} {entry.get('name')!r}, not a pod: "
                "a VFIO GPU goes only to a pod's VM"
            )
    if len(reserved_for) > 1:
        names = ", ".join(str(e.get("name")) for e in reserved_for)
        raise GateRefusedError(f"claim is reserved for {len(reserved_for)} pods ({names}): a VFIO GPU goes to one VM")
    return reserved_for[0]


def decide(
    pod: PodView,
    policy: GatePolicy,
    tee_enabled: bool | Collection[str],
    cc_modes: Mapping[str, str],
) -> GateDecision:
    """Accept or refuse handing the devices in `cc_modes` (device -> CC mode) to `pod`.

    `tee_enabled` names the node's enabled TEEs (`sev-snp`, `tdx`); a plain bool means "some TEE, kind unknown"
    and satisfies only handlers that need no particular kind.
    """
    if not pod.found:
        raise GateRefusedError(f"pod {pod.ref} in reservedFor does not exist")
    if not pod.runtime_class_name:
        raise GateRefusedError(
            f"pod {pod.ref} has no runtimeClassName; a VFIO GPU needs one of: {', '.join(policy.allowed_handlers)}"
        )
    if pod.runtime_class is None:
        raise GateRefusedError(f"pod {pod.ref}: RuntimeClass {pod.runtime_class_name!r} does not exist")
    handler = pod.runtime_class.get("handler")
    if not isinstance(handler, str) or handler not in policy.allowed_handlers:
        raise GateRefusedError(
            f"pod {pod.ref}: RuntimeClass {pod.runtime_class_name!r} has handler {handler!r}, which is not allowed "
            f"for VFIO GPUs (allowed: {', '.join(policy.allowed_handlers)})"
        )
    confidential = handler in policy.confidential_handlers
    if confidential and policy.require_tee:
        _check_tee(handler, policy, tee_enabled)
    decision = GateDecision(pod=pod, handler=handler, confidential=confidential)
    check_cc_modes(decision, policy, cc_modes)
    return decision


def check_cc_modes(decision: GateDecision, policy: GatePolicy, cc_modes: Mapping[str, str]) -> None:
    """Refuse a confidential pod any device whose CC mode is not on/ppcie.

    Separate from `decide` because the modes must be read under the groups' locks: read outside them, a concurrent
    unprepare of the same group can be caught half-way (still on vfio-pci, no longer held) and read as `unknown`.
    """
    if not (decision.confidential and policy.require_cc_mode):
        return
    off = sorted(f"{dev} (cc mode {mode!r})" for dev, mode in cc_modes.items() if mode not in CC_MODES_OK)
    if off:
        raise GateRefusedError(
            f"handler {decision.handler!r} is confidential but GPU CC mode is not on/ppcie for: {', '.join(off)}"
        )


def _check_tee(handler: str, policy: GatePolicy, tee_enabled: bool | Collection[str]) -> None:
    if not tee_enabled:
        raise GateRefusedError(f"handler {handler!r} is confidential but this node has no TEE enabled")
    needed = tee_of_handler(handler, policy)
    kinds = () if isinstance(tee_enabled, bool) else tuple(tee_enabled)
    if needed is not None and needed not in kinds:
        have = ", ".join(kinds) or "a TEE of unknown kind"
        raise GateRefusedError(
            f"handler {handler!r} needs {needed} but this node has {have}: the VM would not start confidential"
        )
