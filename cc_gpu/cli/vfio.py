"""`cc-gpu vfio`: inspect, bind, restore, recover and reset IOMMU groups by hand (admins and tests).

Targets are IOMMU group numbers or PCI addresses (a device names its group). The same `Binder` the plugin uses does
the work, so the same rules hold: whole groups, foreign devices refused unless allow-listed, exact restore, and a
group held by another owner in the state directory is refused unless `--force`. `reset GROUP` resets every member
function of the group that offers a reset; `restore` of a group with nothing recorded is a refusal. Exit 0 on
success, 1 when the host said no (the typed error is printed), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from cc_gpu.cli._host import add_host_arguments, device_filter, open_host, sim_list
from cc_gpu.cli._input import CliError, Refusal, positive_seconds

if TYPE_CHECKING:
    from cc_gpu.host.binder import Binder, BindPolicy

DEFAULT_OWNER = "admin"
_BDF = re.compile(r"^(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_VENDOR_DEVICE = re.compile(r"^[0-9a-fA-F]{4}:(?:[0-9a-fA-F]{4}|\*)$")
_OWNER = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.:/]{0,252}$")


def _target(text: str) -> str:
    if text.isdigit() or _BDF.match(text):
        return text
    raise argparse.ArgumentTypeError(
        f"expected an IOMMU group number or a PCI address ([DOMAIN:]BUS:DEVICE.FUNCTION), got {text!r}")


def _allowed(text: str) -> str:
    if _BDF.match(text):
        return _normalise_bdf(text)
    if _VENDOR_DEVICE.match(text):
        return text.lower()
    raise argparse.ArgumentTypeError(f"expected a PCI address, VENDOR:DEVICE or VENDOR:* in hex, got {text!r}")


def _owner(text: str) -> str:
    if not _OWNER.match(text):
        raise argparse.ArgumentTypeError(
            f"expected an owner name (letters, digits and -_.:/, at most 253 characters), got {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    specs = {
        "status": "show groups: members, drivers, owner, viability",
        "bind": "move a group to its vfio driver",
        "restore": "put a group back on the drivers it had",
        "recover": "roll back interrupted binds/restores (all, or the groups named)",
        "reset": "reset a function, or every function of a group that offers a reset, through its reset_method",
    }
    for action, help_ in specs.items():
        p = sub.add_parser(action, help=help_, description=help_)
        add_host_arguments(p)
        nargs = "+" if action in ("bind", "restore", "reset") else "*"
        every = " (default: all)" if nargs == "*" else ""
        p.add_argument("targets", nargs=nargs, metavar="GROUP|BDF", type=_target,
                       help=f"IOMMU group numbers or PCI addresses of GPUs{every}")
        p.add_argument("--json", action="store_true", help="print JSON")
        if action in ("bind", "restore"):
            p.add_argument("--owner", default=DEFAULT_OWNER, type=_owner,
                           help=f"who holds the group (default {DEFAULT_OWNER})")
            p.add_argument("--force", action="store_true", help="act even if another owner holds the group")
        if action == "bind":
            p.add_argument("--allow", action="append", default=[], metavar="DEV", type=_allowed,
                           help="let a non-GPU device leave the host: BDF, VENDOR:DEVICE or VENDOR:* (repeatable)")
            p.add_argument("--backend", choices=("legacy", "prefer-iommufd"), default="legacy",
                           help="VFIO interface to bind for: the legacy group node /dev/vfio/N, or the iommufd "
                                "cdevs /dev/vfio/devices/vfioN where /dev/iommu exists")
            p.add_argument("--timeout", type=positive_seconds, default=10.0,
                           help="seconds to wait for the kernel (default 10)")
            p.add_argument("--in-use-timeout", type=positive_seconds, default=5.0,
                           help="seconds to wait for processes to release the GPU (default 5)")


def _normalise_bdf(text: str) -> str:
    return text.lower() if text.count(":") == 2 else "0000:" + text.lower()


def _groups(binder: Binder, targets: list[str]) -> list[int]:
    out: list[int] = []
    for t in targets:
        if t.isdigit():
            out.append(int(t))
        elif _BDF.match(t):
            out.append(binder.group_of(_normalise_bdf(t)))
        else:
            raise CliError(f"{t!r} is neither an IOMMU group number nor a PCI address")
    return list(dict.fromkeys(out))


def _policy(args: argparse.Namespace) -> BindPolicy:
    from cc_gpu.host.binder import NVIDIA_PASSTHROUGH, BindPolicy  # noqa: PLC0415
    from cc_gpu.host.discovery import DeviceFilter  # noqa: PLC0415

    if getattr(args, "action", "") != "bind":
        return BindPolicy()
    passthrough = NVIDIA_PASSTHROUGH
    if args.vendor or args.classes:
        gpus = device_filter(args)
        passthrough = DeviceFilter(gpus.vendors, gpus.classes | NVIDIA_PASSTHROUGH.classes)
    allowed = frozenset(args.allow)
    return BindPolicy(allowed_devices=allowed, passthrough=passthrough, backend=args.backend,
                      bind_timeout=args.timeout, in_use_timeout=args.in_use_timeout)


def _status_doc(binder: Binder, group: int) -> dict[str, Any]:
    st = binder.status(group)
    return {
        "group": st.group, "owner": st.owner, "phase": st.phase, "viable": st.viable, "vfio_node": st.vfio_node,
        "members": [
            {"bdf": m.bdf, "ids": m.ids, "class": f"{m.class_code:06x}", "driver": m.driver,
             "driver_override": m.driver_override, "bridge": m.is_bridge}
            for m in st.members
        ],
    }


def _print_status(doc: dict[str, Any]) -> None:
    held = f"held by {doc['owner']} ({doc['phase']})" if doc["owner"] else "not held"
    node = "present" if doc["vfio_node"] else "absent"
    print(f"IOMMU group {doc['group']}: {held}; viable: {'yes' if doc['viable'] else 'no'}; /dev/vfio node: {node}")
    for m in doc["members"]:
        kind = " bridge" if m["bridge"] else ""
        override = f" override={m['driver_override']}" if m["driver_override"] else ""
        print(f"  {m['bdf']} [{m['ids']}] class {m['class']}{kind}: driver {m['driver'] or '(none)'}{override}")


def _all_groups(binder: Binder, args: argparse.Namespace) -> list[int]:
    from cc_gpu.host.discovery import discover  # noqa: PLC0415

    inv = discover(binder.host, device_filter(args))
    return sorted({g.number for g in inv.groups} | set(binder.records.groups()))


def _act(binder: Binder, args: argparse.Namespace) -> Any:
    if args.action == "reset":
        return {"reset": _reset(binder, args.targets)}
    if args.action == "recover":
        groups = _groups(binder, args.targets) if args.targets else binder.interrupted()
        return {"recovered": [g for g in groups if binder.recover(g)]}
    groups = _groups(binder, args.targets) if args.targets else _all_groups(binder, args)
    if args.action == "status":
        return [_status_doc(binder, g) for g in groups]
    if args.action == "bind":
        return [asdict(binder.bind(g, args.owner, force=args.force)) for g in groups]
    empty = [g for g in groups if binder.records.read(g) is None]
    if empty:
        raise Refusal(f"nothing recorded for IOMMU group(s) {', '.join(map(str, empty))}: nothing to restore",
                      kind="NothingToRestore")
    for g in groups:
        binder.restore(g, args.owner, force=args.force)
    return {"restored": groups}


def _reset(binder: Binder, targets: list[str]) -> list[str]:
    """Reset the functions named, and for a group number every member that offers a reset (bridges do not)."""
    from cc_gpu.host import pci  # noqa: PLC0415

    done: list[str] = []
    for t in targets:
        if not t.isdigit():
            bdf = _normalise_bdf(t)
            binder.reset_function(bdf)
            done.append(bdf)
            continue
        members = [m.bdf for m in binder.status(int(t)).members]
        offering = [b for b in members if _reset_method(binder, pci.device_dir(binder.host.roots, b))]
        if not offering:
            raise Refusal(f"no function of IOMMU group {t} offers a reset ({', '.join(members)})",
                          kind="ResetUnsupportedError")
        for bdf in offering:
            binder.reset_function(bdf)
            done.append(bdf)
    return done


def _reset_method(binder: Binder, dev: Any) -> str:
    try:
        return binder.host.io.read_text(dev / "reset_method").strip()
    except FileNotFoundError:
        return ""


def _print(args: argparse.Namespace, result: Any) -> None:
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif args.action == "status":
        for doc in result:
            _print_status(doc)
    elif args.action == "bind":
        for bg in result:
            moved = ", ".join(f"{d['bdf']} {d['original_driver'] or '(none)'} -> {d['driver']}" for d in bg["devices"])
            print(f"IOMMU group {bg['group']} bound ({bg['backend']}) for {bg['owner']}: {moved}")
            print(f"  device nodes: {' '.join(bg['device_nodes'] + bg['control_nodes'])}")
    else:
        for key, values in result.items():
            print(f"{key}: {' '.join(map(str, values)) or '(nothing)'}")


def run(args: argparse.Namespace) -> int:
    if args.sim == "list":
        print(sim_list())
        return 0
    from cc_gpu.errors import CcGpuError  # noqa: PLC0415
    from cc_gpu.host.binder import Binder  # noqa: PLC0415
    from cc_gpu.host.sim import UnknownTopologyError  # noqa: PLC0415

    try:
        policy = _policy(args)
        writes = "" if args.action == "status" else f"vfio {args.action}"
        with open_host(args, writes=writes) as host:
            result = _act(Binder(host, policy), args)
    except UnknownTopologyError as e:
        raise CliError(str(e)) from None
    except CcGpuError as e:
        notes = "".join(f"; {note}" for note in getattr(e, "__notes__", []))
        raise Refusal(f"{type(e).__name__}: {e}{notes}", kind=type(e).__name__) from None
    _print(args, result)
    return 0
