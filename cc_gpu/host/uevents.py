"""Kernel uevents: how the binder waits for a bind to take effect without busy polling.

Driver bind/unbind and device add/remove arrive as kobject uevents on the NETLINK_KOBJECT_UEVENT socket; pyroute2's
`UeventSocket` receives them. The binder subscribes *before* its first sysfs write, then re-checks sysfs after every
event and at a polling interval, so a lost event (socket overrun, no permission, no netlink in a sandbox) costs at
most one interval, never correctness. `PollingOnly` is the fallback when no socket can be opened; the simulated
kernel has its own source that reads the event log it appends to (`cc_gpu.host.sim`).
"""

from __future__ import annotations

import logging
import select
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Uevent:
    """One kernel uevent: `bind`, `unbind`, `add`, `remove`, `change`, ... on a sysfs device path."""

    action: str
    devpath: str
    subsystem: str = ""
    driver: str = ""
    props: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The last path component: a PCI address for PCI devices."""
        return self.devpath.rsplit("/", 1)[-1]


def uevent_from_props(props: Mapping[str, str]) -> Uevent | None:
    """Build a `Uevent` from the KEY=value properties the kernel sends; None when the message is not one."""
    action, devpath = props.get("ACTION"), props.get("DEVPATH")
    if not action or not devpath:
        return None
    return Uevent(action, devpath, props.get("SUBSYSTEM", ""), props.get("DRIVER", ""), dict(props))


def parse_uevent(data: bytes) -> Uevent | None:
    """Parse one raw kernel uevent datagram (`action@devpath\\0KEY=value\\0...`); pure, for tests and tools."""
    if data.startswith(b"libudev\x00"):
        return None  # udevd's re-broadcasts carry a binary header; we listen to the kernel group only
    props: dict[str, str] = {}
    for item in data.split(b"\x00")[1:]:
        key, sep, value = item.partition(b"=")
        if sep and key:
            props[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return uevent_from_props(props)


class UeventSubscription(Protocol):
    def next(self, timeout: float) -> Uevent | None:
        """The next event, or None when `timeout` seconds pass without one."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> UeventSubscription: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class UeventSource(Protocol):
    def subscribe(self) -> UeventSubscription:
        """Start receiving events now; events before this call are not seen."""
        ...


class SubscriptionBase:
    """Shared context-manager plumbing of subscriptions."""

    def next(self, timeout: float) -> Uevent | None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the subscription's resources."""

    def __enter__(self) -> UeventSubscription:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class _Silent(SubscriptionBase):
    def __init__(self, sleep: Callable[[float], None]) -> None:
        self._sleep = sleep

    def next(self, timeout: float) -> Uevent | None:
        self._sleep(max(0.0, timeout))
        return None


class PollingOnly:
    """A source that never delivers events: waiters fall back to polling sysfs at their interval."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep) -> None:
        self._sleep = sleep

    def subscribe(self) -> UeventSubscription:
        return _Silent(self._sleep)


class _NetlinkSubscription(SubscriptionBase):
    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._pending: deque[Uevent] = deque()

    def next(self, timeout: float) -> Uevent | None:
        if self._pending:
            return self._pending.popleft()
        ready, _, _ = select.select([self._sock], [], [], max(0.0, timeout))
        if not ready:
            return None
        for msg in self._sock.get():
            props = {k: v for k, v in msg.items() if isinstance(k, str) and isinstance(v, str)}
            event = uevent_from_props(props)
            if event is not None:
                self._pending.append(event)
        return self._pending.popleft() if self._pending else None

    def close(self) -> None:
        self._sock.close()


class NetlinkUevents:
    """Kernel uevents through pyroute2's `UeventSocket`; falls back to silence (polling) if the socket cannot open."""

    def subscribe(self) -> UeventSubscription:
        try:
            from pyroute2.netlink.uevent import UeventSocket  # noqa: PLC0415 - heavy import, only when waiting

            sock = UeventSocket()
            sock.bind()
        except Exception as e:  # any failure here only costs latency: waiters poll
            log.warning("kernel uevents unavailable (%s); waiting by polling sysfs", e)
            return PollingOnly().subscribe()
        return _NetlinkSubscription(sock)
