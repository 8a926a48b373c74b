"""The plugin's configuration: one frozen record, filled from defaults, a TOML file, environment and flags.

Precedence, lowest first: built-in defaults (the kubelet's paths, `/var/run/cdi`, in-cluster config), the TOML file
named by `--config`, environment variables (each flag has one, `CC_GPU_<FLAG>`, plus `NODE_NAME`), then flags. The
TOML file is decoded strictly like claim parameters: an unknown key or a value of the wrong type is a `ConfigError`
naming the key, so a typo in security policy never silently falls back to a default.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cc_gpu.dra.attestcfg import AttestationSettings, decode_settings
from cc_gpu.dra.bindcfg import BindingSettings, decode_binding
from cc_gpu.dra.gate import TEE_KINDS, GatePolicy
from cc_gpu.dra.katacheck import KataCheckSettings
from cc_gpu.dra.sockets import SocketPaths
from cc_gpu.errors import ConfigError

DEFAULT_DRIVER = "gpu.cc-gpu.io"
LOG_LEVELS = ("debug", "info", "warning", "error")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True)
class Selection:
    """Which GPUs this driver manages: `all`, an explicit list of PCI addresses, or the value of a node label."""

    mode: str = "all"  # all | pci | label
    pci: tuple[str, ...] = ()
    label: str = ""


@dataclass(frozen=True)
class PluginSettings:
    node_name: str = ""
    driver_name: str = DEFAULT_DRIVER
    sim: str = ""  # a simulated topology name; empty: the real host
    sim_root: Path | None = None
    sysfs_root: Path = Path("/sys")
    dev_root: Path = Path("/dev")
    proc_root: Path = Path("/proc")
    nvml_library: Path | None = None  # libnvidia-ml.so.1 at an explicit path (a mount of the node's driver libraries)
    kubeconfig: Path | None = None
    plugin_dir: Path | None = None  # default /var/lib/kubelet/plugins/<driver>
    registry_dir: Path = Path("/var/lib/kubelet/plugins_registry")
    cdi_root: Path = Path("/var/run/cdi")
    pod_uid: str = ""  # set by the DaemonSet for rolling updates: pod-UID socket names
    metrics_port: int = 0
    probe_port: int = 0
    rescan_seconds: float = 30.0
    log_level: str = "info"
    health_service: bool = True
    selection: Selection = field(default_factory=Selection)
    policy: GatePolicy = field(default_factory=GatePolicy)
    attestation: AttestationSettings = field(default_factory=AttestationSettings)
    kata_check: KataCheckSettings = field(default_factory=KataCheckSettings)
    binding: BindingSettings = field(default_factory=BindingSettings)

    @property
    def plugin_path(self) -> Path:
        return self.plugin_dir or Path("/var/lib/kubelet/plugins") / self.driver_name

    @property
    def kata_root(self) -> Path:
        """Where the node's Kata and containerd files are: as set, else the sim tree on a simulated node, else `/`."""
        if self.kata_check.root is not None:
            return self.kata_check.root
        if self.sim:
            return self.sim_root or self.plugin_path / "sim"
        return Path("/")

    def validate(self) -> PluginSettings:
        if not self.node_name:
            raise ConfigError("node name is required (--node-name or NODE_NAME)")
        if len(self.node_name) > 253 or not _DNS_SUBDOMAIN.match(self.node_name):
            raise ConfigError(f"node name {self.node_name!r} is not a Kubernetes node name (a lowercase DNS subdomain)")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"log level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        for name, port in (("metrics port", self.metrics_port), ("probe port", self.probe_port)):
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} {port} is not a TCP port from 0 (off) to 65535")
        if self.sim_root is not None and not self.sim:
            raise ConfigError("sim_root (--sim-root) needs sim (--sim TOPOLOGY): without it the real host is used")
        real_roots = [name for name in ("sysfs_root", "dev_root", "proc_root")
                      if getattr(self, name) != getattr(PluginSettings, name)]
        if self.sim and real_roots:
            raise ConfigError(f"{', '.join(real_roots)} name the real host's filesystems and cannot be used with sim")
        if not self.rescan_seconds > 0 or self.rescan_seconds == float("inf"):
            raise ConfigError(f"rescan seconds {self.rescan_seconds!r} is not a positive number of seconds")
        if len(self.driver_name) > 63 or not _DNS_SUBDOMAIN.match(self.driver_name):
            raise ConfigError(f"driver name {self.driver_name!r} is not a DNS subdomain of at most 63 characters")
        if not self.policy.allowed_handlers:
            raise ConfigError("policy.allowed_handlers must not be empty")
        SocketPaths(self.plugin_path, self.registry_dir, self.driver_name, self.pod_uid)  # raises when too long
        return self


_PATHS = {"sim_root", "sysfs_root", "dev_root", "proc_root", "nvml_library", "kubeconfig", "plugin_dir", "registry_dir",
          "cdi_root"}
_SCALARS: dict[str, type] = {
    "node_name": str, "driver_name": str, "sim": str, "pod_uid": str, "metrics_port": int, "probe_port": int,
    "rescan_seconds": float, "log_level": str, "health_service": bool,
}


def _typed(key: str, value: Any, want: type) -> Any:
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, want) or (want is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key}: must be {want.__name__} (got {value!r})")
    return value


def _str_list(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"config key {key}: must be a list of strings (got {value!r})")
    return tuple(value)


def apply_mapping(base: PluginSettings, data: Mapping[str, Any], where: str = "") -> PluginSettings:
    """Apply a decoded TOML document (or any mapping with the same keys) over `base`, strictly."""
    changes: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{where}{key}"
        if key in _PATHS:
            changes[key] = Path(_typed(name, value, str))
        elif key in _SCALARS:
            changes[key] = _typed(name, value, _SCALARS[key])
        elif key == "selection":
            changes[key] = _selection(value, base.selection)
        elif key == "policy":
            changes[key] = _policy(value, base.policy)
        elif key == "attestation":
            changes[key] = decode_settings(value, base.attestation)
        elif key == "kata_check":
            changes[key] = _kata_check(value, base.kata_check)
        elif key == "binding":
            changes[key] = decode_binding(value, base.binding)
        else:
            raise ConfigError(f"config key {name}: unknown")
    return replace(base, **changes)


def _selection(value: Any, base: Selection) -> Selection:
    if not isinstance(value, dict):
        raise ConfigError("config key selection: must be a table")
    out = base
    for key, v in value.items():
        if key == "mode":
            if v not in ("all", "pci", "label"):
                raise ConfigError(f"config key selection.mode: must be all, pci or label (got {v!r})")
            out = replace(out, mode=v)
        elif key == "pci":
            out = replace(out, pci=tuple(a.lower() for a in _str_list("selection.pci", v)))
        elif key == "label":
            out = replace(out, label=_typed("selection.label", v, str))
        else:
            raise ConfigError(f"config key selection.{key}: unknown")
    return out


def _policy(value: Any, base: GatePolicy) -> GatePolicy:
    if not isinstance(value, dict):
        raise ConfigError("config key policy: must be a table")
    out = base
    for key, v in value.items():
        if key == "allowed_handlers":
            out = replace(out, allowed_handlers=_str_list(f"policy.{key}", v))
        elif key == "confidential_handlers":
            out = replace(out, confidential_handlers=_str_list(f"policy.{key}", v))
        elif key == "require_cc_mode":
            out = replace(out, require_cc_mode=_typed(f"policy.{key}", v, bool))
        elif key == "require_tee":
            out = replace(out, require_tee=_typed(f"policy.{key}", v, bool))
        elif key == "handler_tees":
            if not isinstance(v, dict) or not all(isinstance(t, str) and t in TEE_KINDS for t in v.values()):
                raise ConfigError(f"config key policy.{key}: must be a table of handler = {' | '.join(TEE_KINDS)}")
            out = replace(out, handler_tees={str(h): str(t) for h, t in v.items()})
        else:
            raise ConfigError(f"config key policy.{key}: unknown")
    return out


def _kata_check(value: Any, base: KataCheckSettings) -> KataCheckSettings:
    if not isinstance(value, dict):
        raise ConfigError("config key kata_check: must be a table")
    out = base
    for key, v in value.items():
        if key == "enabled":
            out = replace(out, enabled=_typed("kata_check.enabled", v, bool))
        elif key == "root":
            out = replace(out, root=Path(_typed("kata_check.root", v, str)))
        elif key == "containerd_configs":
            out = replace(out, containerd_configs=tuple(Path(p) for p in _str_list("kata_check.containerd_configs", v)))
        elif key == "kata_version":
            out = replace(out, kata_version=_typed("kata_check.kata_version", v, str))
        else:
            raise ConfigError(f"config key kata_check.{key}: unknown")
    return out


def load_toml(path: Path, base: PluginSettings) -> PluginSettings:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not TOML text (not UTF-8 at byte {e.start})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e
    return apply_mapping(base, data)

