"""`cc-gpu kata check`: reports every Kata setting on this node that would keep a VFIO GPU out of a confidential VM.

The checks themselves live in `cc_gpu.kata` (pure, shared with the plugin's startup check); this module finds and
reads the files, merges Kata's `config.d/` drop-ins over each configuration as the runtime does, and prints the
findings with their fixes. Exit status: 0 no errors (warnings allowed), 1 at least one error, 2 unreadable input.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from cc_gpu.kata import (
    ColdPlugPath,
    KataCheckReport,
    KataConfigError,
    RuntimeClassKind,
    check_kata_config,
    infer_runtime_class,
    merge_layers,
    parse_toml,
)

# Where kata-deploy and distribution packages put the NVIDIA GPU configurations, most specific first.
_CONFIG_DIRS = ("etc/kata-containers", "opt/kata/share/defaults/kata-containers")
_CONFIG_NAMES = tuple(f"configuration-qemu-nvidia-gpu{suffix}.toml" for suffix in ("", "-snp", "-tdx"))
_CONTAINERD_CONFIG = "etc/containerd/config.toml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="check Kata configuration files for confidential GPU passthrough")
    check.add_argument("--config", action="append", type=Path, default=[], metavar="FILE",
                       help="a Kata configuration file (repeatable: each is checked with its config.d/ drop-ins); "
                            "default: the NVIDIA GPU configurations found under --root")
    check.add_argument("--class", dest="runtime_class", choices=[k.value for k in RuntimeClassKind],
                       help="the runtime class the files serve (default: from the file name, then its flags)")
    check.add_argument("--gpus", type=int, default=1, help="most GPUs one pod may get (default 1)")
    check.add_argument("--ports-per-gpu", type=int, default=1,
                       help="PCIe functions in one GPU's IOMMU group, e.g. 2 with an audio function (default 1)")
    check.add_argument("--path", choices=[p.value for p in ColdPlugPath], default=ColdPlugPath.CDI_ANNOTATIONS.value,
                       help="how the GPU reaches Kata: cdi-annotations (released Kata, default) or pod-resources")
    check.add_argument("--containerd-config", action="append", type=Path, default=[], metavar="FILE",
                       help="containerd configuration (repeatable, merged in order); default: under --root if present")
    check.add_argument("--handler", help="containerd runtime handler (default: kata-deploy's name for the class)")
    check.add_argument("--no-drop-ins", action="store_true", help="ignore config.d/ next to each configuration")
    check.add_argument("--root", type=Path, default=Path("/"), help="host root the default paths are under")
    check.add_argument("--json", action="store_true", help="print the reports as JSON")


def run(args: argparse.Namespace) -> int:
    if args.gpus < 1 or args.ports_per_gpu < 1:
        print("cc-gpu kata check: --gpus and --ports-per-gpu must be at least 1", file=sys.stderr)
        return 2
    configs: list[Path] = args.config or _default_configs(args.root)
    if not configs:
        print(f"cc-gpu kata check: no NVIDIA GPU Kata configuration under {args.root}; pass --config FILE",
              file=sys.stderr)
        return 2
    try:
        containerd = _read_containerd(args.containerd_config, args.root)
        reports = [(path, _check_one(path, args, containerd)) for path in configs]
    except (OSError, KataConfigError) as e:
        print(f"cc-gpu kata check: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([_as_json(path, report) for path, report in reports], indent=2))
    else:
        for path, report in reports:
            _print_report(path, report)
    return 0 if all(report.ok for _, report in reports) else 1


def _default_configs(root: Path) -> list[Path]:
    found: list[Path] = []
    for name in _CONFIG_NAMES:
        for directory in _CONFIG_DIRS:
            candidate = root / directory / name
            if candidate.is_file():
                found.append(candidate)
                break
    return found


def _read_containerd(paths: list[Path], root: Path) -> dict[str, object] | None:
    if not paths:
        default = root / _CONTAINERD_CONFIG
        if not default.is_file():
            return None
        paths = [default]
    return merge_layers([parse_toml(str(p), p.read_text(encoding="utf-8")) for p in paths])


def _check_one(path: Path, args: argparse.Namespace, containerd: dict[str, object] | None) -> KataCheckReport:
    layers = [parse_toml(str(path), path.read_text(encoding="utf-8"))]
    drop_in_dir = path.parent / "config.d"
    if not args.no_drop_ins and drop_in_dir.is_dir():
        for drop_in in sorted(drop_in_dir.glob("*.toml")):
            layers.append(parse_toml(str(drop_in), drop_in.read_text(encoding="utf-8")))
    config = merge_layers(layers)
    kind = RuntimeClassKind(args.runtime_class) if args.runtime_class else infer_runtime_class(config, path.name)
    return check_kata_config(config, gpus=args.gpus, runtime_class=kind, path=ColdPlugPath(args.path),
                             ports_per_gpu=args.ports_per_gpu, containerd=containerd, handler=args.handler)


def _as_json(path: Path, report: KataCheckReport) -> dict[str, object]:
    return {
        "config": str(path),
        "class": report.runtime_class.value,
        "path": report.path.value,
        "gpus": report.gpus,
        "ok": report.ok,
        "summary": report.summary,
        "findings": [asdict(f) | {"severity": f.severity.value} for f in report.findings],
    }


def _print_report(path: Path, report: KataCheckReport) -> None:
    verdict = "OK" if report.ok else "FAIL"
    print(f"{verdict}  {path}  (class {report.runtime_class.value}, path {report.path.value}, {report.gpus} GPU(s))")
    for finding in report.findings:
        print(f"  {finding.severity.value:<7} {finding.code}: {finding.setting}: {finding.message}")
        print(f"          fix: {finding.fix}")
