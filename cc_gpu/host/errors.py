"""Typed errors of the host layer.

Every failure the host layer reports on purpose is one of these, so the plugin can turn it into a per-claim error and
an admin reading it learns which device, which IOMMU group and what to do. Retry behaviour is part of the type:
`GpuInUseError`, `BindTimeoutError` and `GroupLockedError` are also `TemporaryError`, the rest are permanent.
"""

from __future__ import annotations

from cc_gpu.errors import HostError, PermanentError, TemporaryError


class NoIommuError(HostError, PermanentError):
    """The IOMMU is off (no /sys/kernel/iommu_groups/*): passthrough is impossible on this node."""


class DeviceVanishedError(HostError, PermanentError):
    """A PCI device disappeared (hot-unplug, fell off the bus) while we looked at it or worked on it."""


class DeviceUnreadableError(HostError, PermanentError):
    """A PCI device's sysfs attributes are not what the kernel writes (garbage, wrong file type): trust none of it."""


class GroupNotFoundError(HostError, PermanentError):
    """The IOMMU group named does not exist on this host."""


class GroupNotViableError(HostError, PermanentError):
    """A device in the group is on a driver that keeps the group from being handed to a VM."""


class ForeignDeviceError(HostError, PermanentError):
    """The group holds a device that policy does not allow to leave the host."""


class SriovActiveError(HostError, PermanentError):
    """SR-IOV virtual functions exist on a device of the group; they must be disabled first."""


class GpuInUseError(HostError, TemporaryError):
    """A process still holds the GPU's /dev/nvidia<minor> node."""


class GroupInUseError(HostError, TemporaryError):
    """A process (typically a VMM) still holds the group's VFIO device node, so the group cannot go back yet."""


class BindTimeoutError(HostError, TemporaryError):
    """The kernel did not report the expected driver or device node in time."""


class BindFailedError(HostError, PermanentError):
    """The kernel refused a write in the bind sequence (the errno is in the message)."""


class RestoreFailedError(HostError, PermanentError):
    """A device could not be put back on its original driver; the record is kept so restore can be retried."""


class GroupOwnedError(HostError, PermanentError):
    """The group is held by another owner in the state directory."""


class GroupLockedError(HostError, TemporaryError):
    """Another operation on the same group is running (in this or another process)."""


class ResetUnsupportedError(HostError, PermanentError):
    """The kernel offers no reset method for this function."""


class BackendUnavailableError(HostError, PermanentError):
    """The requested VFIO interface (legacy group or iommufd cdev) is not available."""


class RecordCorruptError(HostError, PermanentError):
    """A persisted group record cannot be read; it is left in place for an admin to inspect."""
