"""The project's own host layer, built the way the plugin builds it, pointed at the guest's emulated devices.

Emulated devices cannot carry NVIDIA's vendor id, so the passthrough filter is injected: the edu devices and the
standard VGA (vendor 0x1234) play the GPUs; everything else in their groups is foreign unless the policy allows it.
"""

from __future__ import annotations

from cc_gpu.host.binder import Binder, BindPolicy
from cc_gpu.host.discovery import DeviceFilter
from cc_gpu.host.host import Host

STATE_DIR = "/run/cc-gpu"
EMULATED_GPUS = DeviceFilter(frozenset({0x1234}), frozenset({0x00FF, 0x0300}))
FOREIGN_RNG = "1af4:1005"
DISPLAY_AUDIO = "8086:293e"
OWNER = "claim-kernel-test"


def host() -> Host:
    return Host.real("/", state=STATE_DIR, use_nvml=False)


def binder(*allowed: str, backend: str = "legacy") -> Binder:
    policy = BindPolicy(
        allowed_devices=frozenset(allowed),
        passthrough=EMULATED_GPUS,
        backend=backend,
        bind_timeout=30.0,
        lock_timeout=30.0,
    )
    return Binder(host(), policy)
