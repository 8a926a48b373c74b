"""Reads a node's Kata and containerd configuration files and runs the Kata check on each GPU runtime class.

The check itself (`cc_gpu.kata`) is pure; this module is the one place that finds the files where kata-deploy and
distribution packages put them, applies each configuration's `config.d/` drop-ins the way Kata does (file name
order, later wins) and merges containerd's files. `cc-gpu kata check` and the plugin's startup check share it, so
both read a node the same way. It only reads; a file that cannot be read or parsed is a `KataConfigError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

#: Where kata-deploy and distribution packages put the NVIDIA GPU configurations, most specific first.
CONFIG_DIRS = ("etc/kata-containers", "opt/kata/share/defaults/kata-containers")
CONFIG_NAMES = tuple(f"configuration-qemu-nvidia-gpu{suffix}.toml" for suffix in ("", "-snp", "-tdx"))
CONTAINERD_CONFIG = "etc/containerd/config.toml"
#: kata-deploy writes `git describe` of the release here (`kata-deploy-merge-builds.sh`).
KATA_VERSION_FILES = ("opt/kata/VERSION",)


@dataclass(frozen=True)
class NodeReport:
    """The check of one configuration file (with its drop-ins)."""

    config: Path
    report: KataCheckReport


def find_configs(root: Path) -> list[Path]:
    """The NVIDIA GPU configurations under the host root `root`, one per runtime class that has one."""
    found: list[Path] = []
    for name in CONFIG_NAMES:
        for directory in CONFIG_DIRS:
            candidate = root / directory / name
            if candidate.is_file():
                found.append(candidate)
                break
    return found


def read_kata_version(root: Path) -> str | None:
    """The Kata release installed under the host root `root` as its `VERSION` file says, or None."""
    for name in KATA_VERSION_FILES:
        try:
            text = (root / name).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text:
            return text.splitlines()[0][:64]
    return None


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise KataConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    return parse_toml(str(path), text)


def read_kata_config(path: Path, *, drop_ins: bool = True) -> dict[str, Any]:
    """A configuration file merged with the `*.toml` files of the `config.d/` directory beside it."""
    layers = [_read(path)]
    drop_in_dir = path.parent / "config.d"
    if drop_ins and drop_in_dir.is_dir():
        layers += [_read(p) for p in sorted(drop_in_dir.glob("*.toml"))]
    return merge_layers(layers)


def read_containerd(paths: Sequence[Path], root: Path) -> dict[str, Any] | None:
    """containerd's configuration merged from `paths`, or from its default file under `root`; None when absent."""
    if not paths:
        default = root / CONTAINERD_CONFIG
        if not default.is_file():
            return None
        paths = [default]
    return merge_layers([_read(p) for p in paths])


def check_node(
    *,
    gpus: int,
    root: Path = Path("/"),
    configs: Sequence[Path] = (),
    runtime_class: RuntimeClassKind | None = None,
    path: ColdPlugPath = ColdPlugPath.CDI_ANNOTATIONS,
    ports_per_gpu: int = 1,
    containerd_configs: Sequence[Path] = (),
    handler: str | None = None,
    drop_ins: bool = True,
) -> list[NodeReport]:
    """Checks `configs` (default: every NVIDIA GPU configuration under `root`); an empty list when there are none."""
    containerd = read_containerd(containerd_configs, root)
    reports = []
    for config_path in configs or find_configs(root):
        config = read_kata_config(config_path, drop_ins=drop_ins)
        kind = runtime_class or infer_runtime_class(config, config_path.name)
        report = check_kata_config(config, gpus=gpus, runtime_class=kind, path=path, ports_per_gpu=ports_per_gpu,
                                   containerd=containerd, handler=handler)
        reports.append(NodeReport(config_path, report))
    return reports


def node_summary(reports: Sequence[NodeReport]) -> str:
    """One string attribute for the node's devices (at most 64 characters): `ok`, `none` or the failing classes."""
    if not reports:
        return "none"
    failing = [r.report for r in reports if not r.report.ok]
    if not failing:
        return "ok"
    text = ";".join(f"{r.runtime_class.value}:{r.summary}" for r in failing)
    return text if len(text) <= 64 else "fail:" + ",".join(r.runtime_class.value for r in failing)
