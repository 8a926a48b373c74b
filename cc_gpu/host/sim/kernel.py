"""The simulated kernel: a sysfs/dev/proc tree on disk plus the kernel's reactions to writes into it.

Reads are plain file reads of the tree (the real `HostIO` code). Writes to sysfs control files (`bind`, `unbind`,
`drivers_probe`, `driver_override`, `sriov_numvfs`, `reset`, `uevent`) are applied by `SimKernel` under a file lock,
with the errno Linux returns (EBUSY, ENODEV, EINVAL, EACCES). All kernel state lives in the tree and in
`.sim/kernel.json` beside it, never in the writing process: a process killed in the middle of a bind leaves the tree
exactly as a real kernel would, and another process sees it. Every change appends a uevent to `.sim/uevents.log`,
which `SimUevents` tails so a waiter in any process sees it.

Modelled: driver matching (driver_override first, else the driver's ID table), vfio drivers refusing bridges,
`/dev/vfio/<group>` present only while the group is viable (every member on a vfio driver, pci-stub, pcieport or
none) and some member is on vfio, iommufd cdevs (`<dev>/vfio-dev/vfioN`, `/dev/vfio/devices/vfioN`) where the
topology has `/dev/iommu`, module loading, function reset, device removal. Knobs for tests: slow, failing or
never-completing binds, processes holding `/dev/nvidiaN`, CC mode per GPU, TEE on/off, NVML present or not.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import struct
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from cc_gpu.host.ccmode import HIDDEN_FROM_HOST
from cc_gpu.host.fsio import RealHostIO
from cc_gpu.host.nvml import NvmlDeviceInfo
from cc_gpu.host.uevents import SubscriptionBase, Uevent, UeventSubscription

VFIO_SAFE_DRIVERS = ("pci-stub", "pcieport")
CC_REGISTER_VALUES = {"off": 0x0, "on": 0x1, "devtools": 0x3, "ppcie": 0x21, "all-ones": 0xFFFFFFFF}
CC_OFFSETS = {"hopper": 0x1182CC, "blackwell": 0x590}
BAR0_SIZE = 16 << 20


def is_vfio(driver: str | None) -> bool:
    return driver is not None and "vfio" in driver


def _oserror(code: int, what: str) -> OSError:
    return OSError(code, f"{os.strerror(code)} ({what})")


def rel_symlink(target: Path, link: Path) -> None:
    """A relative symlink, as sysfs makes them."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(link):
        link.unlink()
    os.symlink(os.path.relpath(target, link.parent), link)


class SimKernel:
    """The model of the kernel for one sim tree rooted at `root`. Cheap to construct; holds no state itself."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.sys = self.root / "sys"
        self.dev = self.root / "dev"
        self.proc = self.root / "proc"
        self.meta = self.root / ".sim"

    # ---- state file and lock -------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.meta / "kernel.json"

    @property
    def events_path(self) -> Path:
        return self.meta / "uevents.log"

    def exists(self) -> bool:
        return self.state_path.exists()

    @contextmanager
    def locked(self) -> Iterator[dict[str, Any]]:
        """The kernel state, read-modify-written under the kernel lock (serialises all sim writers, all processes)."""
        self.meta.mkdir(parents=True, exist_ok=True)
        with open(self.meta / "kernel.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                state = self.load()
                yield state
                tmp = self.state_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
                os.replace(tmp, self.state_path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            data = {}
        return data

    def emit(self, action: str, dev: Path | str, driver: str = "", **props: str) -> None:
        devpath = "/" + str(dev.relative_to(self.sys)) if isinstance(dev, Path) else dev
        record = {"ACTION": action, "DEVPATH": devpath, "SUBSYSTEM": props.pop("SUBSYSTEM", "pci"), **props}
        if driver:
            record["DRIVER"] = driver
        with open(self.events_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # ---- tree helpers --------------------------------------------------------------------------------------------
    def device_dir(self, bdf: str) -> Path:
        return Path(os.path.realpath(self.sys / "bus" / "pci" / "devices" / bdf))

    def driver_of(self, bdf: str) -> str | None:
        link = self.sys / "bus" / "pci" / "devices" / bdf / "driver"
        try:  # not lexists-then-readlink: a bind in another thread may remove the link in between
            return os.readlink(link).rsplit("/", 1)[-1]
        except FileNotFoundError:
            return None

    def _group_of(self, bdf: str) -> int | None:
        link = self.sys / "bus" / "pci" / "devices" / bdf / "iommu_group"
        try:
            return int(os.readlink(link).rsplit("/", 1)[-1])
        except (OSError, ValueError):  # absent, or damaged by a test: the model treats both as "no group"
            return None

    def _read(self, bdf: str, attr: str) -> str:
        return (self.sys / "bus" / "pci" / "devices" / bdf / attr).read_text().strip()

    def _override(self, bdf: str) -> str | None:
        value = self._read(bdf, "driver_override")
        return None if value in ("", "(null)") else value

    def _matches(self, state: dict[str, Any], drv: str, bdf: str) -> bool:
        override = self._override(bdf)
        if override is not None:
            return override == drv
        vendor = self._read(bdf, "vendor").removeprefix("0x").lower()
        klass = self._read(bdf, "class").removeprefix("0x").lower()
        for rule in state.get("drivers", {}).get(drv, {}).get("match", []):
            if rule.get("vendor", vendor) == vendor and klass.startswith(rule.get("class", "")):
                return True
        return False

    # ---- the kernel's reactions ----------------------------------------------------------------------------------
    def write(self, path: Path, data: str) -> None:
        """Apply a write to a sysfs file; raises OSError with the errno Linux would return."""
        real = Path(os.path.realpath(path))
        try:
            rel = real.relative_to(self.sys).parts
        except ValueError:
            with open(real, "w", encoding="utf-8") as f:  # outside sysfs: an ordinary file
                f.write(data)
            return
        value = data.strip()
        if not real.exists() and not os.path.lexists(path):
            raise _oserror(errno.ENOENT, str(path))
        if rel[:3] == ("bus", "pci", "drivers") and len(rel) == 5 and rel[4] in ("bind", "unbind"):
            if rel[4] == "bind":
                self._delay(value)
                with self.locked() as state:
                    self._bind(state, rel[3], value)
            else:
                with self.locked() as state:
                    self._unbind(state, rel[3], value)
            return
        if rel == ("bus", "pci", "drivers_probe"):
            self._delay(value)
            with self.locked() as state:
                self._probe(state, value)
            return
        attr, bdf = rel[-1], rel[-2] if len(rel) >= 2 else ""
        with self.locked() as state:
            if attr == "driver_override":
                (real.parent / attr).write_text((value or "(null)") + "\n")
            elif attr == "sriov_numvfs":
                self._set_numvfs(real.parent, value)
            elif attr == "reset":
                self._reset(state, bdf, real.parent)
            elif attr == "uevent":
                self.emit(value or "change", real.parent)
            else:
                raise _oserror(errno.EACCES, f"{path} is read-only")

    def _delay(self, bdf: str) -> None:
        state = self.load()
        knob = state.get("bind", {}).get(bdf, {})
        delay = float(knob.get("delay", state.get("default_bind_delay", 0.0)))
        if delay > 0:
            time.sleep(delay)  # a slow probe blocks the writer, as in Linux; other devices bind meanwhile

    def _bind(self, state: dict[str, Any], drv: str, bdf: str) -> None:
        if not os.path.lexists(self.sys / "bus" / "pci" / "devices" / bdf):
            raise _oserror(errno.ENODEV, f"no device {bdf}")
        if self.driver_of(bdf) is not None:
            raise _oserror(errno.EBUSY, f"{bdf} already bound to {self.driver_of(bdf)}")
        if not self._matches(state, drv, bdf):
            raise _oserror(errno.ENODEV, f"{drv} does not match {bdf}")
        self._attach(state, drv, bdf)

    def _attach(self, state: dict[str, Any], drv: str, bdf: str) -> None:
        dev = self.device_dir(bdf)
        if is_vfio(drv) and self._read(bdf, "class").removeprefix("0x").startswith("0604"):
            raise _oserror(errno.EINVAL, f"{drv} refuses bridge {bdf}")
        knob = state.get("bind", {}).get(bdf, {})
        if knob.get("driver") == drv or (knob.get("driver") is None and is_vfio(drv)):
            mode = knob.get("mode", "ok")
            if mode == "fail":
                raise _oserror(int(knob.get("errno", errno.EIO)), f"probe of {bdf} by {drv} failed")
            if mode == "never":
                return  # probe deferred and never completed: the write returns, nothing binds
        drv_dir = self.sys / "bus" / "pci" / "drivers" / drv
        rel_symlink(drv_dir, dev / "driver")
        rel_symlink(dev, drv_dir / bdf)
        if is_vfio(drv) and state.get("iommufd"):
            n = int(state.get("next_cdev", 0))
            state["next_cdev"] = n + 1
            (dev / "vfio-dev" / f"vfio{n}").mkdir(parents=True, exist_ok=True)
            (self.dev / "vfio" / "devices").mkdir(parents=True, exist_ok=True)
            (self.dev / "vfio" / "devices" / f"vfio{n}").touch()
        self.emit("bind", dev, drv)
        self._update_group_node(self._group_of(bdf))

    def _unbind(self, state: dict[str, Any], drv: str, bdf: str) -> None:
        if self.driver_of(bdf) != drv:
            raise _oserror(errno.ENODEV, f"{bdf} is not bound to {drv}")
        dev = self.device_dir(bdf)
        (dev / "driver").unlink()
        drv_link = self.sys / "bus" / "pci" / "drivers" / drv / bdf
        if os.path.lexists(drv_link):
            drv_link.unlink()
        cdev_dir = dev / "vfio-dev"
        if cdev_dir.exists():
            for name in os.listdir(cdev_dir):
                node = self.dev / "vfio" / "devices" / name
                if node.exists():
                    node.unlink()
            shutil.rmtree(cdev_dir)
        self.emit("unbind", dev, drv)
        self._update_group_node(self._group_of(bdf))

    def _probe(self, state: dict[str, Any], bdf: str) -> None:
        if not os.path.lexists(self.sys / "bus" / "pci" / "devices" / bdf):
            raise _oserror(errno.ENODEV, f"no device {bdf}")
        if self.driver_of(bdf) is not None:
            return
        drivers = sorted(os.listdir(self.sys / "bus" / "pci" / "drivers"))
        for drv in drivers:
            if self._matches(state, drv, bdf):
                self._attach(state, drv, bdf)
                return

    def _set_numvfs(self, dev: Path, value: str) -> None:
        try:
            n = int(value)
        except ValueError:
            raise _oserror(errno.EINVAL, f"sriov_numvfs {value!r}") from None
        total = int((dev / "sriov_totalvfs").read_text()) if (dev / "sriov_totalvfs").exists() else 0
        current = int((dev / "sriov_numvfs").read_text())
        if n > total:
            raise _oserror(errno.ERANGE, f"{n} > sriov_totalvfs {total}")
        if n and current:
            raise _oserror(errno.EBUSY, "VFs already enabled; write 0 first")
        (dev / "sriov_numvfs").write_text(f"{n}\n")

    def _reset(self, state: dict[str, Any], bdf: str, dev: Path) -> None:
        if not (dev / "reset_method").read_text().strip():
            raise _oserror(errno.ENOTTY, f"no reset method for {bdf}")
        resets = state.setdefault("resets", {})
        resets[bdf] = int(resets.get(bdf, 0)) + 1
        self.emit("change", dev, RESET="1")

    def _update_group_node(self, group: int | None) -> None:
        if group is None:
            return
        members = os.listdir(self.sys / "kernel" / "iommu_groups" / str(group) / "devices")
        drivers = [self.driver_of(b) for b in members]
        viable = all(d is None or is_vfio(d) or d in VFIO_SAFE_DRIVERS for d in drivers)
        node = self.dev / "vfio" / str(group)
        if viable and any(is_vfio(d) for d in drivers):
            if not node.exists():
                node.touch()
                self.emit("add", f"/devices/virtual/vfio/{group}", SUBSYSTEM="vfio")
        elif node.exists():
            node.unlink()
            self.emit("remove", f"/devices/virtual/vfio/{group}", SUBSYSTEM="vfio")

    def load_module(self, name: str) -> None:
        mod = name.replace("-", "_")
        with self.locked() as state:
            modules = state.get("modules", {})
            if mod not in modules:
                raise _oserror(errno.ENOENT, f"module {name} not found")
            (self.sys / "module" / mod).mkdir(parents=True, exist_ok=True)
            drv_dir = self.sys / "bus" / "pci" / "drivers" / modules[mod]
            drv_dir.mkdir(parents=True, exist_ok=True)
            for f in ("bind", "unbind", "new_id"):
                (drv_dir / f).touch()
            self.emit("add", f"/module/{mod}", SUBSYSTEM="module")

    # ---- knobs for tests and the demo ----------------------------------------------------------------------------
    def set_bind_behaviour(
        self, bdf: str, mode: str = "ok", err: int = errno.EIO, delay: float | None = None, driver: str | None = None
    ) -> None:
        """`mode`: ok | fail (the probe returns -err) | never (the probe never completes).

        Applies to binds by `driver`, or by any vfio driver when `driver` is None.
        """
        with self.locked() as state:
            knob: dict[str, Any] = {"mode": mode, "errno": err, "driver": driver}
            if delay is not None:
                knob["delay"] = delay
            state.setdefault("bind", {})[bdf] = knob

    def set_default_bind_delay(self, seconds: float) -> None:
        with self.locked() as state:
            state["default_bind_delay"] = seconds

    def hold(self, bdf: str) -> int:
        """A process opens the GPU's /dev/nvidia<minor>; returns its PID."""
        with self.locked() as state:
            minor = state["nvidia_minor"][bdf]
        return self.hold_node(f"/dev/nvidia{minor}")

    def hold_node(self, node: str) -> int:
        """A process opens the host device node `node` (a VMM holding `/dev/vfio/<group>`, say); returns its PID."""
        with self.locked() as state:
            pid = int(state.get("next_pid", 4000))
            state["next_pid"] = pid + 1
            fd_dir = self.proc / str(pid) / "fd"
            fd_dir.mkdir(parents=True)
            os.symlink(node, fd_dir / "3")
            return pid

    def release(self, pid: int) -> None:
        """The process exits."""
        with self.locked():
            shutil.rmtree(self.proc / str(pid), ignore_errors=True)

    def remove_device(self, bdf: str) -> None:
        """The device falls off the bus (hot-unplug, a dead link)."""
        with self.locked() as state:
            dev = self.device_dir(bdf)
            drv = self.driver_of(bdf)
            if drv is not None:
                self._unbind(state, drv, bdf)
            group = self._group_of(bdf)
            if group is not None:
                (self.sys / "kernel" / "iommu_groups" / str(group) / "devices" / bdf).unlink()
            (self.sys / "bus" / "pci" / "devices" / bdf).unlink()
            shutil.rmtree(dev)
            self.emit("remove", dev)
            self._update_group_node(group)

    def set_cc_mode(self, bdf: str, mode: str) -> None:
        """Write the CC register in the GPU's simulated BAR0 (`on`, `off`, `devtools`, `ppcie`, `all-ones`)."""
        with self.locked() as state:
            arch = state["architecture"].get(bdf, "unknown")
            offset = CC_OFFSETS.get(arch)
            if offset is None:
                raise ValueError(f"{bdf}: architecture {arch!r} has no CC register")
            value = CC_REGISTER_VALUES[mode]
            if arch == "blackwell" and mode == "ppcie":
                value = 0x1
            with open(self.device_dir(bdf) / "resource0", "r+b") as f:
                f.seek(offset)
                f.write(struct.pack("<I", value))
            state.setdefault("nvml_cc", {})[bdf] = None if mode == "all-ones" else mode

    def set_tee(self, sev_snp: bool, tdx: bool = False) -> None:
        with self.locked():
            for mod, param, on in (("kvm_amd", "sev_snp", sev_snp), ("kvm_intel", "tdx", tdx)):
                p = self.sys / "module" / mod / "parameters" / param
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("Y\n" if on else "N\n")

    def set_nvml(self, present: bool) -> None:
        with self.locked() as state:
            state["nvml_present"] = present

    def set_sriov(self, bdf: str, numvfs: int) -> None:
        """An admin enabled (or disabled) SR-IOV on the device."""
        self.write(self.sys / "bus" / "pci" / "devices" / bdf / "sriov_numvfs", str(numvfs))

    def reset_count(self, bdf: str) -> int:
        return int(self.load().get("resets", {}).get(bdf, 0))

    def events(self) -> list[dict[str, str]]:
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line.strip()]

    def nvml_info(self, bdf: str) -> NvmlDeviceInfo | None:
        state = self.load()
        info = state.get("nvml", {}).get(bdf)
        if not state.get("nvml_present") or info is None or self.driver_of(bdf) != "nvidia":
            return None
        cc = state.get("nvml_cc", {}).get(bdf)
        if cc in HIDDEN_FROM_HOST:
            return None  # as the hardware: once CC mode is on, the host driver no longer offers the GPU to NVML
        return NvmlDeviceInfo(info["uuid"], int(info["memory"]), info["vbios"], state["driver_version"], cc)


class SimHostIO(RealHostIO):
    """`HostIO` on the sim tree: reads are the real code; writes and module loads go through the kernel model."""

    def __init__(self, kernel: SimKernel) -> None:
        super().__init__()
        self.kernel = kernel

    def write_text(self, path: Path, data: str) -> None:
        self.kernel.write(path, data)

    def load_module(self, name: str) -> None:
        self.kernel.load_module(name)


class SimNvml:
    """NVML as the sim node's driver would answer: only for GPUs on `nvidia`, only when the sim says NVML exists."""

    def __init__(self, kernel: SimKernel) -> None:
        self.kernel = kernel

    def device_info(self, bdf: str) -> NvmlDeviceInfo | None:
        return self.kernel.nvml_info(bdf)

    def batch(self) -> AbstractContextManager[None]:
        return nullcontext()


class _LogSubscription(SubscriptionBase):
    POLL = 0.005

    def __init__(self, path: Path) -> None:
        path.touch(exist_ok=True)
        self._f = open(path, encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._f.seek(0, os.SEEK_END)
        self._partial = ""

    def next(self, timeout: float) -> Uevent | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            chunk = self._f.readline()
            if chunk:
                self._partial += chunk
                if self._partial.endswith("\n"):
                    line, self._partial = self._partial, ""
                    props = json.loads(line)
                    return Uevent(props["ACTION"], props["DEVPATH"], props.get("SUBSYSTEM", ""),
                                  props.get("DRIVER", ""), props)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(self.POLL, remaining))

    def close(self) -> None:
        self._f.close()


class SimUevents:
    """Uevents of the simulated kernel, read from its append-only log (visible across processes)."""

    def __init__(self, kernel: SimKernel) -> None:
        self.kernel = kernel

    def subscribe(self) -> UeventSubscription:
        self.kernel.meta.mkdir(parents=True, exist_ok=True)
        return _LogSubscription(self.kernel.events_path)
