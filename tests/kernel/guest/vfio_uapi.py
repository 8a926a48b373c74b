"""The VFIO and iommufd user API, spoken through the real ioctls, so the kernel tests can ask the kernel itself.

The binder decides who owns a device; these calls are how a VMM would then use it, and they are the kernel's own
verdict on the binder's work: a group is usable only if the container or iommufd flow below succeeds on it.

Request numbers follow `include/uapi/linux/vfio.h` and `include/uapi/linux/iommufd.h` (Linux 6.12): every command
is `_IO(';', nr)` with VFIO's numbers from `VFIO_BASE` (100) and iommufd's from `IOMMUFD_CMD_BASE` (0x80); the
argument structs carry their own size (`argsz`/`size`) instead of the ioctl number encoding it.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8


def _io(kind: str, nr: int) -> int:
    """`_IO(type, nr)`: no direction and no size bits, as both uapi headers define their commands."""
    return (ord(kind) << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT)


VFIO_TYPE = ";"
VFIO_BASE = 100
VFIO_API_VERSION = 0
VFIO_TYPE1v2_IOMMU = 3

VFIO_GET_API_VERSION = _io(VFIO_TYPE, VFIO_BASE + 0)
VFIO_CHECK_EXTENSION = _io(VFIO_TYPE, VFIO_BASE + 1)
VFIO_SET_IOMMU = _io(VFIO_TYPE, VFIO_BASE + 2)
VFIO_GROUP_GET_STATUS = _io(VFIO_TYPE, VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER = _io(VFIO_TYPE, VFIO_BASE + 4)
VFIO_GROUP_UNSET_CONTAINER = _io(VFIO_TYPE, VFIO_BASE + 5)
VFIO_GROUP_GET_DEVICE_FD = _io(VFIO_TYPE, VFIO_BASE + 6)
VFIO_DEVICE_GET_INFO = _io(VFIO_TYPE, VFIO_BASE + 7)
VFIO_DEVICE_BIND_IOMMUFD = _io(VFIO_TYPE, VFIO_BASE + 18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _io(VFIO_TYPE, VFIO_BASE + 19)

VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

IOMMUFD_TYPE = ";"
IOMMUFD_CMD_IOAS_ALLOC = 0x81
IOMMU_IOAS_ALLOC = _io(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)

_GROUP_STATUS = struct.Struct("=II")  # argsz, flags
_DEVICE_INFO = struct.Struct("=IIII")  # argsz, flags, num_regions, num_irqs (the minimum argsz the kernel accepts)
_BIND_IOMMUFD = struct.Struct("=IIiI")  # argsz, flags, iommufd, out_devid
_ATTACH_PT = struct.Struct("=III")  # argsz, flags, pt_id
_IOAS_ALLOC = struct.Struct("=III")  # size, flags, out_ioas_id


@dataclass(frozen=True)
class DeviceInfo:
    flags: int
    num_regions: int
    num_irqs: int


def api_version(container_fd: int) -> int:
    return fcntl.ioctl(container_fd, VFIO_GET_API_VERSION)


def check_extension(container_fd: int, extension: int) -> bool:
    return fcntl.ioctl(container_fd, VFIO_CHECK_EXTENSION, extension) > 0


def group_status(group_fd: int) -> int:
    """The group's flags (`VFIO_GROUP_FLAGS_*`)."""
    buf = bytearray(_GROUP_STATUS.pack(_GROUP_STATUS.size, 0))
    fcntl.ioctl(group_fd, VFIO_GROUP_GET_STATUS, buf)
    return _GROUP_STATUS.unpack(buf)[1]


def set_container(group_fd: int, container_fd: int) -> None:
    fcntl.ioctl(group_fd, VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("=i", container_fd)))


def set_iommu(container_fd: int, iommu_type: int = VFIO_TYPE1v2_IOMMU) -> None:
    fcntl.ioctl(container_fd, VFIO_SET_IOMMU, iommu_type)


def group_device_fd(group_fd: int, bdf: str) -> int:
    """`VFIO_GROUP_GET_DEVICE_FD`: the argument is the device name as a NUL-terminated string.

    The name goes in a mutable buffer: only then does `fcntl.ioctl` return the syscall's result (the new fd)
    instead of a copy of the buffer.
    """
    return fcntl.ioctl(group_fd, VFIO_GROUP_GET_DEVICE_FD, bytearray(bdf.encode() + b"\0"))


def device_info(device_fd: int) -> DeviceInfo:
    buf = bytearray(_DEVICE_INFO.pack(_DEVICE_INFO.size, 0, 0, 0))
    fcntl.ioctl(device_fd, VFIO_DEVICE_GET_INFO, buf)
    _, flags, regions, irqs = _DEVICE_INFO.unpack(buf)
    return DeviceInfo(flags=flags, num_regions=regions, num_irqs=irqs)


def bind_iommufd(device_fd: int, iommufd: int) -> int:
    """`VFIO_DEVICE_BIND_IOMMUFD` on a cdev fd; returns the device id iommufd assigned."""
    buf = bytearray(_BIND_IOMMUFD.pack(_BIND_IOMMUFD.size, 0, iommufd, 0))
    fcntl.ioctl(device_fd, VFIO_DEVICE_BIND_IOMMUFD, buf)
    return _BIND_IOMMUFD.unpack(buf)[3]


def ioas_alloc(iommufd: int) -> int:
    buf = bytearray(_IOAS_ALLOC.pack(_IOAS_ALLOC.size, 0, 0))
    fcntl.ioctl(iommufd, IOMMU_IOAS_ALLOC, buf)
    return _IOAS_ALLOC.unpack(buf)[2]


def attach_pt(device_fd: int, pt_id: int) -> int:
    """`VFIO_DEVICE_ATTACH_IOMMUFD_PT`; returns the id the kernel reports back: the IOAS, or the hardware page
    table it created for the IOAS during the attach."""
    buf = bytearray(_ATTACH_PT.pack(_ATTACH_PT.size, 0, pt_id))
    fcntl.ioctl(device_fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, buf)
    return _ATTACH_PT.unpack(buf)[2]


@contextmanager
def opened(path: str, flags: int = os.O_RDWR) -> Iterator[int]:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def open_close(path: str, flags: int = os.O_RDWR) -> None:
    """Open and close at once: for asserting the errno with which the kernel refuses an open."""
    os.close(os.open(path, flags | os.O_CLOEXEC))


@dataclass(frozen=True)
class ContainerCheck:
    """What the kernel answered along the legacy container flow for one group."""

    api_version: int
    type1v2: bool
    viable: bool
    device: DeviceInfo


def container_flow(dev_root: str, group: int, bdf: str) -> ContainerCheck:
    """The flow a VMM runs on a legacy group: container, group status, SET_CONTAINER, SET_IOMMU, GET_DEVICE_FD.

    Raises OSError with the kernel's errno at the first step it refuses.
    """
    with opened(f"{dev_root}/vfio/vfio") as container, opened(f"{dev_root}/vfio/{group}") as group_fd:
        version = api_version(container)
        type1v2 = check_extension(container, VFIO_TYPE1v2_IOMMU)
        viable = bool(group_status(group_fd) & VFIO_GROUP_FLAGS_VIABLE)
        set_container(group_fd, container)
        set_iommu(container, VFIO_TYPE1v2_IOMMU)
        device_fd = group_device_fd(group_fd, bdf)
        try:
            info = device_info(device_fd)
        finally:
            os.close(device_fd)
        return ContainerCheck(api_version=version, type1v2=type1v2, viable=viable, device=info)


@dataclass(frozen=True)
class CdevCheck:
    """What the kernel answered along the iommufd flow for one device cdev."""

    devid: int
    ioas: int
    attached_pt: int
    device: DeviceInfo


@contextmanager
def cdev_session(dev_root: str, cdev: str) -> Iterator[CdevCheck]:
    """Open `/dev/iommu` and the device's cdev, bind, allocate an IOAS and attach; everything stays open inside."""
    with opened(f"{dev_root}/iommu") as iommufd, opened(f"{dev_root}/vfio/devices/{cdev}") as device_fd:
        devid = bind_iommufd(device_fd, iommufd)
        ioas = ioas_alloc(iommufd)
        pt = attach_pt(device_fd, ioas)
        yield CdevCheck(devid=devid, ioas=ioas, attached_pt=pt, device=device_info(device_fd))
