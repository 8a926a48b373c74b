"""Which VFIO interface a claim's devices are handed out with: the legacy group node or the iommufd cdev.

Kata's Go runtime refuses a legacy group node (`/dev/vfio/<group>`) for a confidential guest since 3.26
(`virtcontainers/qemu.go`, `createPCIeTopology`: "ConfidentialGuest needs IOMMUFD"), and supports iommufd cdevs
(`/dev/vfio/devices/vfioN`) since 3.15. So a claim whose pod runs a confidential handler gets the cdev by default, and
a node without iommufd refuses that claim up front, naming what the kernel lacks, instead of preparing a device the
VM will never start with. An explicit `iommuMode: legacy` for a confidential pod is honoured only on a Kata release
known to be older than 3.26: when the version cannot be read, the plugin assumes the current rule (fail closed).
Claims of non-confidential pods keep `auto`: the host layer picks the legacy group where `/dev/vfio/vfio` exists.

The decision is a pure function; the caller supplies the node's capability (`GpuView.iommufd`, also published as the
`iommuFD` device attribute so the scheduler can avoid legacy-only nodes) and the Kata version read at startup.
"""

from __future__ import annotations

import re

from cc_gpu.dra.errors import ClaimError

#: Kata releases from this one on refuse a legacy group node for a confidential guest.
KATA_CC_NEEDS_IOMMUFD = (3, 26, 0)
#: iommufd cdevs in CDI specs are supported from this Kata release on.
KATA_IOMMUFD_MIN = (3, 15, 0)

NODE_NEEDS = (
    "the node's kernel needs iommufd with VFIO device cdevs (CONFIG_IOMMUFD=y, CONFIG_VFIO_DEVICE_CDEV=y, "
    "so that /dev/iommu and /dev/vfio/devices/vfioN exist)"
)

_VERSION_RE = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


class IommuModeRefusedError(ClaimError):
    """The VFIO interface a claim needs (or asks for) cannot work with the pod's runtime on this node."""

    reason = "iommu-mode"


def parse_kata_version(text: str | None) -> tuple[int, int, int] | None:
    """`3.26.0`, `v3.26.0-12-gabcdef` (kata-deploy's `VERSION` file is `git describe`) -> (3, 26, 0); else None."""
    if not text:
        return None
    m = _VERSION_RE.match(text)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def version_text(version: tuple[int, int, int] | None) -> str:
    return ".".join(map(str, version)) if version is not None else "unknown"


def choose_mode(
    requested: str,
    *,
    confidential: bool,
    node_iommufd: bool,
    kata_version: tuple[int, int, int] | None,
    device: str,
) -> str:
    """The mode to bind `device` with (`legacy`, `iommufd` or `auto`), or `IommuModeRefusedError` saying why not.

    `requested` is the claim's effective `iommuMode` (`auto`, `legacy`, `iommufd`).
    """
    if not confidential:
        if requested == "iommufd" and not node_iommufd:
            raise IommuModeRefusedError(f"device {device}: iommuMode iommufd was requested but {NODE_NEEDS}")
        return requested
    if requested == "legacy":
        if kata_version is None or kata_version >= KATA_CC_NEEDS_IOMMUFD:
            raise IommuModeRefusedError(
                f"device {device}: iommuMode legacy for a confidential pod is refused: Kata "
                f"{version_text(kata_version)} (>= 3.26 or not readable) refuses a legacy VFIO group node for a "
                "confidential guest; remove iommuMode or set it to iommufd"
            )
        return "legacy"
    if not node_iommufd:
        raise IommuModeRefusedError(
            f"device {device}: a confidential pod's GPU must be passed as an iommufd cdev (Kata >= 3.26 refuses the "
            f"legacy group node for confidential guests), but {NODE_NEEDS}; schedule the pod on a node whose "
            "devices have iommuFD=true"
        )
    if kata_version is not None and kata_version < KATA_IOMMUFD_MIN:
        raise IommuModeRefusedError(
            f"device {device}: Kata {version_text(kata_version)} cannot pass iommufd cdevs (needs >= 3.15); "
            "upgrade Kata"
        )
    return "iommufd"
