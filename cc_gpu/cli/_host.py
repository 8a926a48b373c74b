"""Flags shared by the host commands (`discover`, `vfio`) and the one place they become a `Host`.

`--sim TOPOLOGY` builds (or reuses, with `--sim-root`) a simulated node; otherwise the real host under `--root`
(default `/`, `/host` in a container), each root overridable on its own. A simulation flag never falls through to the
real host: `--sim-root` without `--sim` is an error, and so is `--sim` with a real host's root (it would be ignored).
A command that writes to the real host says which roots it uses, on stderr, before it acts. Heavy imports stay inside
functions.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cc_gpu.cli._input import CliError, directory, hex_id

if TYPE_CHECKING:
    from cc_gpu.host.discovery import DeviceFilter
    from cc_gpu.host.host import Host


def add_host_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("host selection")
    g.add_argument("--sim", metavar="TOPOLOGY", help="use a simulated node (see `--sim list`)")
    g.add_argument("--sim-root", metavar="DIR", type=directory,
                   help="keep the simulated node in DIR (reused if it exists; needs --sim)")
    g.add_argument("--root", metavar="PREFIX", type=directory, help="prefix of the host's filesystems (default /)")
    g.add_argument("--sysfs-root", metavar="DIR", type=directory, help="the host's /sys (default PREFIX/sys)")
    g.add_argument("--dev-root", metavar="DIR", type=directory, help="the host's /dev (default PREFIX/dev)")
    g.add_argument("--proc-root", metavar="DIR", type=directory, help="the host's /proc (default PREFIX/proc)")
    g.add_argument("--modules-root", metavar="DIR", type=directory,
                   help="the host's /lib/modules (default PREFIX/lib/modules)")
    g.add_argument("--state-dir", metavar="DIR", type=directory, help="state directory for records and locks "
                   "(default PREFIX/var/lib/cc-gpu)")
    g.add_argument("--no-nvml", action="store_true", help="do not ask NVML (sysfs facts only)")
    f = parser.add_argument_group("device filter")
    f.add_argument("--vendor", action="append", metavar="HEX",
                   type=hex_id, help="GPU vendor ID (repeatable; default 10de)")
    f.add_argument("--class", dest="classes", action="append", metavar="HEX",
                   type=hex_id,
                   help="16-bit PCI class of a GPU (repeatable; default 0300 and 0302)")


def device_filter(args: argparse.Namespace) -> DeviceFilter:
    from cc_gpu.host.discovery import NVIDIA_GPUS, DeviceFilter  # noqa: PLC0415

    if not args.vendor and not args.classes:
        return NVIDIA_GPUS
    return DeviceFilter.parse(args.vendor or ["10de"], args.classes or ["0300", "0302"])


_REAL_ROOTS = ("root", "sysfs_root", "dev_root", "proc_root", "modules_root")


def check_host_flags(args: argparse.Namespace) -> None:
    """Refuse flag combinations that would quietly act on another host than the one meant."""
    if args.sim_root and not args.sim:
        raise CliError("--sim-root needs --sim TOPOLOGY; without it the real host would be used")
    if args.sim:
        from cc_gpu.host.sim import TOPOLOGIES  # noqa: PLC0415

        if args.sim not in TOPOLOGIES:
            raise CliError(f"--sim: unknown simulated topology {args.sim!r}; expected one of {', '.join(TOPOLOGIES)}")
        given = [f"--{name.replace('_', '-')}" for name in _REAL_ROOTS if getattr(args, name) is not None]
        if given:
            verb = "names" if len(given) == 1 else "name"
            raise CliError(f"{', '.join(given)} {verb} the real host's filesystems and cannot be used with --sim")


@contextlib.contextmanager
def open_host(args: argparse.Namespace, *, writes: str = "") -> Iterator[Host]:
    """The host the flags name; a throw-away simulated node lives as long as the context.

    `writes` names what the command is about to change (e.g. "bind"): on the real host one line on stderr says which
    roots it will write under, so an admin who forgot `--sim` sees it before anything moves.
    """
    check_host_flags(args)
    if args.sim:
        from cc_gpu.host.sim import create_sim_host  # noqa: PLC0415

        if args.sim_root:
            yield create_sim_host(args.sim, args.sim_root, state=args.state_dir)
            return
        with tempfile.TemporaryDirectory(prefix="cc-gpu-sim-") as tmp:
            yield create_sim_host(args.sim, tmp, state=args.state_dir)
        return
    from cc_gpu.host.host import Host  # noqa: PLC0415

    host = Host.real(
        args.root or "/", sysfs=args.sysfs_root, dev=args.dev_root, proc=args.proc_root, modules=args.modules_root,
        state=args.state_dir, use_nvml=not args.no_nvml,
    )
    if writes:
        r = host.roots
        print(f"cc-gpu: {writes} acts on the real host: sysfs {r.sysfs}, /dev {r.dev}, state {r.state}",
              file=sys.stderr)
    yield host


def sim_list() -> str:
    from cc_gpu.host.sim import TOPOLOGIES, topology  # noqa: PLC0415

    return "\n".join(f"{name:<20} {topology(name).description}" for name in TOPOLOGIES)
