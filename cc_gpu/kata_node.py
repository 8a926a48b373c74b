"""Reads a node's Kata and containerd configuration files and runs the Kata check on each GPU runtime class.

The check itself (`cc_gpu.kata`) is pure; this module is the one place that finds the files the shim really loads, the
way containerd and Kata find them:

- containerd's configuration is merged with its `imports` (globs; relative paths against the importing file's
  directory; nested imports followed), for config version 2 (containerd 1.7) and 3 (2.x, where kata-deploy writes the
  runtimes into an imported drop-in);
- each runtime handler's configuration is `options.ConfigPath` of its containerd runtime (kata-deploy >= 3.27 points it
  at `.../runtimes/<shim>/configuration-<shim>.toml`; 3.29 makes the old path a relative symlink), else the
  well-known locations;
- symlinks are resolved under the host root (an absolute link target is re-rooted there), and `config.d/` is the
  one beside the *resolved* file, as Kata's `EvalSymlinks` does;
- every entry of `config.d/` is applied in name order, not only `*.toml`: Kata reads them all, and a directory or a
  file that is not TOML aborts its loading, so it is a `KataConfigError` here too.

`cc-gpu kata check` and the plugin's startup check share it, so both read a node the same way. It only reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cc_gpu.kata import (
    ColdPlugPath,
    KataCheckReport,
    KataConfigError,
    RuntimeClassKind,
    check_kata_config,
    containerd_runtime,
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


MAX_SYMLINKS = 40
MAX_IMPORT_DEPTH = 8


@dataclass(frozen=True)
class NodeReport:
    """The check of one configuration file (with its drop-ins)."""

    config: Path
    report: KataCheckReport
    resolved: Path | None = None  # the file the shim loads when `config` is a symlink


def resolve_under(root: Path, path: Path) -> Path:
    """`path` (absolute, or relative to `root`) with every symlink resolved inside the host root `root`.

    An absolute link target means the node's `/`, so it is taken under `root`, never on this machine; `..` never
    climbs above `root`. A loop or a chain longer than the kernel allows is a `KataConfigError`.
    """
    parts = list(PurePosixPath(path.as_posix()).parts)
    if parts and parts[0] == "/":
        parts = parts[1:]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        if candidate.is_symlink():
            hops += 1
            if hops > MAX_SYMLINKS:
                raise KataConfigError(f"{path}: too many levels of symbolic links under {root}")
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                done = []
                parts = list(target.parts[1:]) + parts
            else:
                parts = list(target.parts) + parts
            continue
        done.append(part)
    return root.joinpath(*done)


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


def drop_in_files(path: Path) -> list[Path]:
    """Every entry of the `config.d/` beside `path`, in name order, as Kata reads them (not only `*.toml`)."""
    drop_in_dir = path.parent / "config.d"
    if not drop_in_dir.is_dir():
        return []
    entries = sorted(drop_in_dir.iterdir(), key=lambda p: p.name)
    for entry in entries:
        if entry.is_dir():
            raise KataConfigError(f"{entry}: a directory in config.d; Kata reads every entry there and aborts loading "
                                  "the configuration on it: move it out of config.d")
    return entries


def read_kata_config(path: Path, *, drop_ins: bool = True, root: Path | None = None) -> dict[str, Any]:
    """A configuration file merged with every entry of the `config.d/` directory beside it, in name order.

    With `root`, `path` is resolved under that host root first and `config.d/` is taken beside the resolved file.
    An entry that is not TOML aborts loading in Kata, so it raises `KataConfigError` (naming that consequence) here.
    """
    if root is not None:
        path = resolve_under(root, path)
    layers = [_read(path)]
    if drop_ins:
        for entry in drop_in_files(path):
            try:
                layers.append(_read(entry))
            except KataConfigError as e:
                raise KataConfigError(f"{e}; Kata reads every entry of config.d and aborts loading the "
                                      "configuration on this one") from e
    return merge_layers(layers)


def host_path(root: Path, path: Path) -> Path:
    """`path` (a file on this machine, usually under the host root) with its symlinks resolved as on the node."""
    return resolve_under(root, path.relative_to(root)) if path.is_relative_to(root) else path.resolve()


def _imports(config: Mapping[str, Any], importing: Path, root: Path) -> list[Path]:
    """The files a containerd configuration imports: globs, relative to the importing file's directory."""
    found: list[Path] = []
    for item in config.get("imports") or []:
        if not isinstance(item, str) or not item:
            raise KataConfigError(f"{importing}: imports must be a list of paths (got {item!r})")
        pattern = PurePosixPath(item)
        base = root / pattern.relative_to("/") if pattern.is_absolute() else importing.parent / pattern
        if any(c in item for c in "*?["):
            found += sorted(p for p in host_path(root, base.parent).glob(base.name) if p.is_file())
        else:
            found.append(host_path(root, base))
    return found


def read_containerd(paths: Sequence[Path], root: Path) -> dict[str, Any] | None:
    """containerd's configuration merged from `paths` (or its default file under `root`) and everything they import.

    Imported files are merged after the file that imports them, in order, as containerd does; None when absent.
    """
    if not paths:
        default = root / CONTAINERD_CONFIG
        if not default.is_file():
            return None
        paths = [default]
    layers: list[dict[str, Any]] = []
    seen: set[Path] = set()

    def load(path: Path, depth: int) -> None:
        if path in seen:
            return
        if depth > MAX_IMPORT_DEPTH:
            raise KataConfigError(f"{path}: containerd imports nest deeper than {MAX_IMPORT_DEPTH}")
        seen.add(path)
        config = _read(path)
        layers.append({k: v for k, v in config.items() if k != "imports"})
        for imported in _imports(config, path, root):
            load(imported, depth + 1)

    for path in paths:
        load(path, 0)
    return merge_layers(layers)


def config_path_for(containerd: Mapping[str, Any] | None, handler: str) -> str | None:
    """`options.ConfigPath` of containerd's runtime `handler` (what the shim loads), or None."""
    if containerd is None:
        return None
    runtime = containerd_runtime(containerd, handler)
    options = runtime.get("options") if runtime is not None else None
    value = options.get("ConfigPath") if isinstance(options, Mapping) else None
    return value if isinstance(value, str) and value else None


def _targets(root: Path, containerd: Mapping[str, Any] | None, runtime_class: RuntimeClassKind | None,
             handler: str | None) -> list[tuple[Path, RuntimeClassKind | None, str | None]]:
    """The configuration of each GPU runtime class: containerd's ConfigPath for its handler, else the usual places."""
    kinds = [runtime_class] if runtime_class is not None else list(RuntimeClassKind)
    found: list[tuple[Path, RuntimeClassKind | None, str | None]] = []
    fallback = {p.name: p for p in find_configs(root)}
    for kind in kinds:
        name = handler or kind.handler
        configured = config_path_for(containerd, name)
        if configured is not None:
            found.append((root / configured.lstrip("/"), kind, name))
            continue
        suffix = "" if kind is RuntimeClassKind.PLAIN else f"-{kind.value}"
        default = fallback.get(f"configuration-qemu-nvidia-gpu{suffix}.toml")
        if default is not None:
            found.append((default, None if runtime_class is None else kind, handler))
    return found


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
    functions: int | None = None,
    kata_version: str | None = None,
    node_iommufd: bool | None = None,
    kubelet_root: Path | None = None,
) -> list[NodeReport]:
    """Checks `configs` (default: what each GPU runtime handler's shim loads under `root`); empty when there are none.

    `kata_version` defaults to the node's `opt/kata/VERSION`; `functions` is the number of PCIe functions one pod
    may get cold-plugged (default `gpus * ports_per_gpu`).
    """
    containerd = read_containerd(containerd_configs, root)
    version = kata_version if kata_version is not None else (read_kata_version(root) or "")
    targets: list[tuple[Path, RuntimeClassKind | None, str | None]] = (
        [(c, runtime_class, handler) for c in configs] if configs
        else _targets(root, containerd, runtime_class, handler)
    )
    reports = []
    for config_path, kind_given, handler_given in targets:
        resolved = host_path(root, config_path)
        config = read_kata_config(resolved, drop_ins=drop_ins)
        kind = kind_given or infer_runtime_class(config, resolved.name)
        report = check_kata_config(config, gpus=gpus, runtime_class=kind, path=path, ports_per_gpu=ports_per_gpu,
                                   containerd=containerd, handler=handler_given, functions=functions,
                                   kata_version=version, node_iommufd=node_iommufd, kubelet_root=kubelet_root)
        reports.append(NodeReport(config_path, report, resolved if resolved != config_path else None))
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
