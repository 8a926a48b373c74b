"""`cc-gpu kata check`: reports every Kata setting on this node that would keep a VFIO GPU out of a confidential VM.

The checks live in `cc_gpu.kata` (pure) and the file reading in `cc_gpu.kata_node`, both shared with the plugin's
startup check; this module turns flags into a call and prints the findings with their fixes.
Exit status: 0 no errors (warnings allowed), 1 at least one error, 2 unreadable input or usage errors.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from cc_gpu.cli._input import CliError, directory, existing_directory, input_file, positive_int
from cc_gpu.kata import ColdPlugPath, KataConfigError, RuntimeClassKind
from cc_gpu.kata_node import NodeReport, check_node, node_summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="check Kata configuration files for confidential GPU passthrough")
    check.add_argument("--config", action="append", type=input_file, default=[], metavar="FILE",
                       help="a Kata configuration file (repeatable: each is checked with its config.d/ drop-ins); "
                            "default: the NVIDIA GPU configurations found under --root")
    check.add_argument("--class", dest="runtime_class", choices=[k.value for k in RuntimeClassKind],
                       help="the runtime class the files serve (default: from the file name, then its flags)")
    check.add_argument("--gpus", type=positive_int, default=1, help="most GPUs one pod may get (default 1)")
    check.add_argument("--ports-per-gpu", type=positive_int, default=1,
                       help="PCIe functions in one GPU's IOMMU group, e.g. 2 with an audio function (default 1)")
    check.add_argument("--path", choices=[p.value for p in ColdPlugPath], default=ColdPlugPath.CDI_ANNOTATIONS.value,
                       help="how the GPU reaches Kata: cdi-annotations (released Kata, default) or pod-resources")
    check.add_argument("--containerd-config", action="append", type=input_file, default=[], metavar="FILE",
                       help="containerd configuration (repeatable, merged in order); default: under --root if present")
    check.add_argument("--handler", help="containerd runtime handler (default: kata-deploy's name for the class)")
    check.add_argument("--no-drop-ins", action="store_true", help="ignore config.d/ next to each configuration")
    check.add_argument("--root", type=existing_directory, default=Path("/"),
                        help="host root the default paths are under")
    check.add_argument("--kata-version", help="the node's Kata release (default: <root>/opt/kata/VERSION)")
    check.add_argument("--kubelet-root", type=directory,
                        help="the kubelet's --root-dir, to check pod_resource_api_sock")
    check.add_argument("--json", action="store_true", help="print the reports as JSON")


def _check_text(flag: str, path: Path) -> None:
    """A configuration file given by hand must be UTF-8 text (TOML): say which one is not before parsing anything."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CliError(f"{flag} {path}: not a TOML text file (not UTF-8 at byte {e.start})",
                       kind="KataConfigError") from None
    except OSError as e:
        raise CliError(f"{flag} {path}: cannot read: {e.strerror or e}", kind="KataConfigError") from None


def run(args: argparse.Namespace) -> int:
    for path in args.config:
        _check_text("--config", path)
    for path in args.containerd_config:
        _check_text("--containerd-config", path)
    try:
        reports = check_node(
            gpus=args.gpus, root=args.root, configs=args.config,
            runtime_class=RuntimeClassKind(args.runtime_class) if args.runtime_class else None,
            path=ColdPlugPath(args.path), ports_per_gpu=args.ports_per_gpu,
            containerd_configs=args.containerd_config, handler=args.handler, drop_ins=not args.no_drop_ins,
            kata_version=args.kata_version, kubelet_root=args.kubelet_root,
        )
    except KataConfigError as e:
        raise CliError(str(e), kind=type(e).__name__) from None
    except UnicodeDecodeError as e:
        raise CliError(f"a configuration file is not UTF-8 text (TOML): {e.reason} at byte {e.start}",
                       kind="KataConfigError") from None
    except OSError as e:
        raise CliError(f"cannot read {e.filename or 'a configuration file'}: {e.strerror or e}",
                       kind="KataConfigError") from None
    if not reports:
        raise CliError(f"no NVIDIA GPU Kata configuration under {args.root}; pass --config FILE",
                       kind="NoConfiguration")
    if args.json:
        print(json.dumps([_as_json(r) for r in reports], indent=2))
    else:
        for r in reports:
            _print_report(r)
        print(f"summary: {node_summary(reports)}")
    return 0 if all(r.report.ok for r in reports) else 1


def _as_json(node_report: NodeReport) -> dict[str, object]:
    report = node_report.report
    return {
        "config": str(node_report.config),
        "loaded": str(node_report.resolved or node_report.config),
        "kata_version": report.kata_version,
        "class": report.runtime_class.value,
        "path": report.path.value,
        "gpus": report.gpus,
        "ok": report.ok,
        "summary": report.summary,
        "findings": [asdict(f) | {"severity": f.severity.value} for f in report.findings],
    }


def _print_report(node_report: NodeReport) -> None:
    report = node_report.report
    verdict = "OK" if report.ok else "FAIL"
    loaded = f" -> {node_report.resolved}" if node_report.resolved else ""
    print(f"{verdict}  {node_report.config}{loaded}  (class {report.runtime_class.value}, path {report.path.value}, "
          f"{report.gpus} GPU(s), Kata {report.kata_version or 'unknown'})")
    for finding in report.findings:
        print(f"  {finding.severity.value:<7} {finding.code}: {finding.setting}: {finding.message}")
        print(f"          fix: {finding.fix}")
