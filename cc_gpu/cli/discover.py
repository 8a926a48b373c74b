"""`cc-gpu discover`: the node's GPUs, their IOMMU groups and CC mode, as a table or a stable JSON document.

JSON (`--json`, version 1): {"version": 1, "node": {"iommu", "iommufd", "tee": {"sev_snp", "tdx"}},
"gpus": [...], "groups": [...], "units": [...]}. Keys are only ever added; integers are printed as numbers and PCI IDs
as 4-digit lowercase hex strings. Exit 1 when the node cannot pass GPUs through (no IOMMU), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from cc_gpu.cli._host import add_host_arguments, device_filter, open_host, sim_list
from cc_gpu.cli._input import CliError, Refusal

if TYPE_CHECKING:
    from cc_gpu.host.discovery import Inventory
    from cc_gpu.host.tee import HostTee

JSON_VERSION = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_host_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of a table")


def _hex4(v: int) -> str:
    return f"{v:04x}"


def to_document(inv: Inventory, tee: HostTee) -> dict[str, Any]:
    return {
        "version": JSON_VERSION,
        "node": {"iommu": True, "iommufd": inv.iommufd, "tee": {"sev_snp": tee.sev_snp, "tdx": tee.tdx}},
        "gpus": [
            {
                "bdf": g.bdf,
                "vendor_id": _hex4(g.vendor_id),
                "device_id": _hex4(g.device_id),
                "subsystem_vendor_id": _hex4(g.subsystem_vendor_id),
                "subsystem_device_id": _hex4(g.subsystem_device_id),
                "product_name": g.product_name,
                "architecture": g.architecture,
                "numa_node": g.numa_node,
                "pcie_root": g.pcie_root,
                "iommu_group": g.iommu_group,
                "driver": g.driver,
                "iommufd_cdev": g.iommufd_cdev,
                "sriov": {"totalvfs": g.sriov_totalvfs, "numvfs": g.sriov_numvfs},
                "display": "vga" if g.is_vga else "3d",
                "cc_mode": g.cc_mode,
                "shares_group_with": list(g.shares_group_with),
                "nvml": None if g.uuid is None else {
                    "uuid": g.uuid, "memory_bytes": g.memory_bytes, "vbios_version": g.vbios_version,
                    "driver_version": g.driver_version,
                },
            }
            for g in inv.gpus
        ],
        "groups": [
            {
                "number": grp.number,
                "gpus": list(grp.gpus),
                "members": [
                    {"bdf": m.bdf, "vendor_id": _hex4(m.vendor_id), "device_id": _hex4(m.device_id),
                     "class": f"{m.class_code:06x}", "driver": m.driver, "bridge": m.is_bridge}
                    for m in grp.members
                ],
            }
            for grp in inv.groups
        ],
        "units": [{"name": u.name, "iommu_group": u.iommu_group, "gpus": list(u.gpus)} for u in inv.units],
    }


def to_table(inv: Inventory, tee: HostTee) -> str:
    header = ("BDF", "PRODUCT", "ARCH", "NUMA", "GROUP", "DRIVER", "CC", "GROUP MEMBERS")
    rows = [header]
    for g in inv.gpus:
        others = [f"{m.bdf}({m.driver or '-'})" for m in g.group_members if m.bdf != g.bdf]
        rows.append((
            g.bdf, g.product_name, g.architecture, "-" if g.numa_node is None else str(g.numa_node),
            "-" if g.iommu_group is None else str(g.iommu_group), g.driver or "-", g.cc_mode,
            ", ".join(others) or "(alone)",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    tee_text = ", ".join(tee.kinds) or "none"
    lines.append("")
    lines.append(f"{len(inv.gpus)} GPU(s) in {len(inv.units)} passthrough unit(s); host TEE: {tee_text}; "
                 f"iommufd: {'yes' if inv.iommufd else 'no'}")
    for u in inv.units:
        if len(u.gpus) > 1:
            lines.append(f"note: IOMMU group {u.iommu_group} holds {len(u.gpus)} GPUs ({', '.join(u.gpus)}); "
                         "they are allocated together as one unit")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.sim == "list":
        print(sim_list())
        return 0
    from cc_gpu.errors import CcGpuError  # noqa: PLC0415
    from cc_gpu.host.discovery import discover  # noqa: PLC0415
    from cc_gpu.host.sim import UnknownTopologyError  # noqa: PLC0415
    from cc_gpu.host.tee import read_host_tee  # noqa: PLC0415

    try:
        with open_host(args) as host:
            inv = discover(host, device_filter(args))
            tee = read_host_tee(host.io, host.roots)
    except UnknownTopologyError as e:
        raise CliError(str(e)) from None
    except ValueError as e:
        raise CliError(f"bad device filter: {e}") from None
    except CcGpuError as e:
        raise Refusal(str(e), kind=type(e).__name__) from None
    if args.json:
        print(json.dumps(to_document(inv, tee), indent=2, sort_keys=True))
    else:
        print(to_table(inv, tee))
    return 0
