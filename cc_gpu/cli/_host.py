"""Flags shared by the host commands (`discover`, `vfio`) and the one place they become a `Host`.

`--sim TOPOLOGY` builds (or reuses, with `--sim-root`) a simulated node; otherwise the real host under `--root`
(default `/`, `/host` in a container), each root overridable on its own. Heavy imports stay inside functions.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cc_gpu.host.discovery import DeviceFilter
    from cc_gpu.host.host import Host


def add_host_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("host selection")
    g.add_argument("--sim", metavar="TOPOLOGY", help="use a simulated node (see `--sim list`)")
    g.add_argument("--sim-root", metavar="DIR", help="keep the simulated node in DIR (reused if it exists)")
    g.add_argument("--root", default="/", metavar="PREFIX", help="prefix of the host's filesystems (default /)")
    g.add_argument("--sysfs-root", metavar="DIR", help="the host's /sys (default PREFIX/sys)")
    g.add_argument("--dev-root", metavar="DIR", help="the host's /dev (default PREFIX/dev)")
    g.add_argument("--proc-root", metavar="DIR", help="the host's /proc (default PREFIX/proc)")
    g.add_argument("--modules-root", metavar="DIR", help="the host's /lib/modules (default PREFIX/lib/modules)")
    g.add_argument("--state-dir", metavar="DIR", help="state directory for records and locks "
                   "(default PREFIX/var/lib/cc-gpu)")
    g.add_argument("--no-nvml", action="store_true", help="do not ask NVML (sysfs facts only)")
    f = parser.add_argument_group("device filter")
    f.add_argument("--vendor", action="append", metavar="HEX", help="GPU vendor ID (repeatable; default 10de)")
    f.add_argument("--class", dest="classes", action="append", metavar="HEX",
                   help="16-bit PCI class of a GPU (repeatable; default 0300 and 0302)")


def device_filter(args: argparse.Namespace) -> DeviceFilter:
    from cc_gpu.host.discovery import NVIDIA_GPUS, DeviceFilter  # noqa: PLC0415

    if not args.vendor and not args.classes:
        return NVIDIA_GPUS
    return DeviceFilter.parse(args.vendor or ["10de"], args.classes or ["0300", "0302"])


@contextlib.contextmanager
def open_host(args: argparse.Namespace) -> Iterator[Host]:
    """The host the flags name; a throw-away simulated node lives as long as the context."""
    if args.sim:
        from cc_gpu.host.sim import create_sim_host  # noqa: PLC0415

        if args.sim_root:
            yield create_sim_host(args.sim, args.sim_root, state=args.state_dir)
            return
        with tempfile.TemporaryDirectory(prefix="cc-gpu-sim-") as tmp:
            yield create_sim_host(args.sim, tmp, state=args.state_dir)
        return
    from cc_gpu.host.host import Host  # noqa: PLC0415

    yield Host.real(
        args.root, sysfs=args.sysfs_root, dev=args.dev_root, proc=args.proc_root, modules=args.modules_root,
        state=args.state_dir, use_nvml=not args.no_nvml,
    )


def sim_list() -> str:
    from cc_gpu.host.sim import TOPOLOGIES, topology  # noqa: PLC0415

    return "\n".join(f"{name:<20} {topology(name).description}" for name in TOPOLOGIES)
