"""The `[binding]` settings: device binding conditions (KEP-5007) and quarantine taints (KEP-5055).

Binding conditions are off by default, and only the admin can turn them on: a kube-scheduler whose
`DRADeviceBindingConditions` gate is off never allocates a device that names binding conditions, and the plugin cannot
see the scheduler's gates. So `conditions = true` is a statement about the cluster (API server and scheduler 1.36+,
`DRADeviceBindingConditions` and `DRAResourceClaimDeviceStatus` on, which is their default from 1.36). What the API
server supports the plugin checks itself: a server that drops the fields from a stored slice turns the feature off
here (see `slices.SlicePublisher.dropped`).

Quarantine taints are on by default: a device taint with effect NoSchedule is what NVIDIA's driver and this one already
publish for unhealthy devices, GA in 1.37; where the server drops taints the device is left out of the slice instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cc_gpu.errors import ConfigError

READY_CONDITION = "VfioReady"
"""The binding condition: the GPU's group is bound to vfio-pci and its pre-flight checks passed."""
FAILED_CONDITION = "VfioFailed"
"""The binding failure condition: the early bind or a pre-flight check failed (its reason says which)."""
MAX_CONDITIONS = 4
"""The API's limit for each of bindingConditions and bindingFailureConditions (resource/v1 BindingConditionsMaxSize)."""


@dataclass(frozen=True)
class BindingSettings:
    conditions: bool = False  # publish binding conditions on VFIO devices and bind them before the pod lands
    quarantine: bool = True  # taint (NoSchedule) a GPU whose early bind or pre-flight check failed
    quarantine_seconds: float = 300.0  # how long a failed bind quarantines its GPU before the plugin retries it
    workers: int = 4  # early binds run at once (each on its own IOMMU groups)
    queue_limit: int = 1024  # claims waiting for an early bind; beyond it the oldest wait for the next resync
    resync_seconds: float = 60.0  # a full relist of the claims, also after a watch ends cleanly
    # Watch every claim of the cluster instead of only those the labeler (`bindlabel.py`, in the pod-gate
    # Deployment) labelled with this node: for a cluster without that controller; costs the API server per node.
    watch_all: bool = False


_KEYS: dict[str, type] = {
    "conditions": bool, "quarantine": bool, "quarantine_seconds": float, "workers": int, "queue_limit": int,
    "resync_seconds": float, "watch_all": bool,
}


def decode_binding(value: Any, base: BindingSettings) -> BindingSettings:
    """The `[binding]` table, strictly: an unknown key or a wrong type is a `ConfigError` naming it."""
    if not isinstance(value, Mapping):
        raise ConfigError("config key binding: must be a table")
    changes: dict[str, Any] = {}
    for key, raw in value.items():
        want = _KEYS.get(key)
        if want is None:
            raise ConfigError(f"config key binding.{key}: unknown")
        v = float(raw) if want is float and isinstance(raw, int) and not isinstance(raw, bool) else raw
        if not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise ConfigError(f"config key binding.{key}: must be {want.__name__} (got {v!r})")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not v > 0:
            raise ConfigError(f"config key binding.{key}: must be positive (got {v!r})")
        changes[key] = v
    return replace(base, **changes)
