"""`cc-gpu plugin`: the DRA kubelet plugin, the node daemon.

Flags follow the command-line contract; every flag has an environment mirror (`CC_GPU_<FLAG>`, and `NODE_NAME` for
`--node-name`), and `--config FILE` reads a TOML file with the same keys (underscores) plus `[selection]`,
`[policy]`, `[attestation]` (attested claims: `cc_gpu.dra.attestcfg`), `[kata_check]` and `[binding]` (binding
conditions and quarantine: `cc_gpu.dra.bindcfg`) tables. Precedence:
defaults < file < environment < flags. This module is the only place that builds the real adapters: the host under
the given roots (or a simulated one with `--sim`) and the Kubernetes client.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from cc_gpu.cli._input import CliError, node_name, port, positive_seconds

LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got {text!r}")
    return text.lower()


_TYPES: dict[str, Any] = {"str": str, "path": Path, "port": port, "seconds": positive_seconds, "level": _log_level,
                          "node": node_name}

# flag -> (settings field, kind)
FLAGS: dict[str, tuple[str, str]] = {
    "--node-name": ("node_name", "node"),
    "--driver-name": ("driver_name", "str"),
    "--sim": ("sim", "str"),
    "--sim-root": ("sim_root", "path"),
    "--sysfs-root": ("sysfs_root", "path"),
    "--dev-root": ("dev_root", "path"),
    "--proc-root": ("proc_root", "path"),
    "--nvml-library": ("nvml_library", "path"),
    "--kubeconfig": ("kubeconfig", "path"),
    "--plugin-dir": ("plugin_dir", "path"),
    "--registry-dir": ("registry_dir", "path"),
    "--cdi-root": ("cdi_root", "path"),
    "--pod-uid": ("pod_uid", "str"),
    "--metrics-port": ("metrics_port", "port"),
    "--probe-port": ("probe_port", "port"),
    "--rescan-seconds": ("rescan_seconds", "seconds"),
    "--log-level": ("log_level", "level"),
}
HELP = {
    "--node-name": "this node's name (env NODE_NAME)",
    "--driver-name": "the DRA driver name (default gpu.cc-gpu.io)",
    "--sim": "run on a simulated host with this topology (dgx-h100, ...) instead of the real one",
    "--sim-root": "directory of the simulated host (default: <plugin-dir>/sim)",
    "--sysfs-root": "sysfs root (default /sys)",
    "--dev-root": "/dev root (default /dev)",
    "--proc-root": "/proc root (default /proc)",
    "--nvml-library": "load NVML from this libnvidia-ml.so.1 (default: the library search path)",
    "--kubeconfig": "kubeconfig file (default: in-cluster config)",
    "--plugin-dir": "plugin directory: DRA socket, checkpoint, locks (default /var/lib/kubelet/plugins/<driver>)",
    "--registry-dir": "kubelet plugin registry directory (default /var/lib/kubelet/plugins_registry)",
    "--cdi-root": "directory for transient CDI specs (default /var/run/cdi)",
    "--pod-uid": "this plugin pod's UID: enables rolling-update socket names (env POD_UID)",
    "--metrics-port": "serve Prometheus /metrics on this port (0: off)",
    "--probe-port": "serve the gRPC health liveness probe on this TCP port (0: off)",
    "--rescan-seconds": "rescan the hardware at least this often",
    "--log-level": "debug, info (default), warning or error",
}
ENV_ALIASES = {"node_name": "NODE_NAME", "pod_uid": "POD_UID"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML configuration file (env CC_GPU_CONFIG)")
    from cc_gpu.dra.settings import PluginSettings  # noqa: PLC0415 (light: no verifier code)

    built_in = PluginSettings()
    for flag, (dest, kind) in FLAGS.items():
        # The flag's own default stays None (unset: the file and the environment may still set it); help shows the
        # built-in value that applies when nothing does.
        value = getattr(built_in, dest)
        shown = "" if "default" in HELP[flag] or value in (None, "") else f" (default {value})"
        parser.add_argument(flag, dest=dest, default=None, help=HELP[flag] + shown, type=_TYPES[kind])
    parser.add_argument("--select-pci", dest="select_pci", default=None,
                        help="manage only these GPUs: comma-separated PCI addresses (env CC_GPU_SELECT_PCI)")
    parser.add_argument("--select-label", dest="select_label", default=None,
                        help="manage the GPUs listed in this node label's value (env CC_GPU_SELECT_LABEL)")
    parser.add_argument("--kata-check", dest="kata_check", choices=("on", "off"), default=None,
                        help="check the node's Kata configuration at startup and publish the result (default on; "
                             "env CC_GPU_KATA_CHECK)")
    parser.add_argument("--kata-root", dest="kata_root", type=Path, default=None,
                        help="host root under which the Kata and containerd configuration files are read (default /, "
                             "the sim tree with --sim; env CC_GPU_KATA_ROOT)")
    parser.add_argument("--kata-version", dest="kata_version", default=None,
                        help="the node's Kata release when <kata root>/opt/kata/VERSION does not say it; decides "
                             "whether iommuMode legacy is allowed for confidential pods (env CC_GPU_KATA_VERSION)")


def _env_name(dest: str) -> str:
    return "CC_GPU_" + dest.upper()


def _convert(kind: str, value: str) -> Any:
    return _TYPES[kind](value)


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> Any:
    """Merge defaults, file, environment and flags into validated `PluginSettings`."""
    from cc_gpu.dra.settings import PluginSettings, Selection, load_toml  # noqa: PLC0415
    from cc_gpu.errors import ConfigError  # noqa: PLC0415

    settings = PluginSettings()
    config = args.config or (Path(environ["CC_GPU_CONFIG"]) if environ.get("CC_GPU_CONFIG") else None)
    if config:
        settings = load_toml(config, settings)
    changes: dict[str, Any] = {}
    for _flag, (dest, kind) in FLAGS.items():
        env_value = environ.get(_env_name(dest)) or environ.get(ENV_ALIASES.get(dest, ""), "")
        flag_value = getattr(args, dest)
        try:
            if flag_value is not None:
                changes[dest] = flag_value
            elif env_value:
                changes[dest] = _convert(kind, env_value)
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"environment {_env_name(dest)}: {e}") from e
    settings = replace(settings, **changes)
    pci = args.select_pci or environ.get("CC_GPU_SELECT_PCI")
    label = args.select_label or environ.get("CC_GPU_SELECT_LABEL")
    if pci and label:
        raise ConfigError("choose GPUs by PCI address or by node label, not both")
    if pci:
        settings = replace(settings, selection=Selection("pci", tuple(a.strip().lower() for a in pci.split(","))))
    elif label:
        settings = replace(settings, selection=Selection("label", label=label))
    kata_check = args.kata_check or environ.get("CC_GPU_KATA_CHECK")
    if kata_check and kata_check not in ("on", "off"):
        raise ConfigError(f"environment CC_GPU_KATA_CHECK: must be on or off (got {kata_check!r})")
    kata_root = args.kata_root or (Path(environ["CC_GPU_KATA_ROOT"]) if environ.get("CC_GPU_KATA_ROOT") else None)
    if kata_check:
        settings = replace(settings, kata_check=replace(settings.kata_check, enabled=kata_check == "on"))
    if kata_root:
        settings = replace(settings, kata_check=replace(settings.kata_check, root=kata_root))
    kata_version = args.kata_version or environ.get("CC_GPU_KATA_VERSION")
    if kata_version:
        settings = replace(settings, kata_check=replace(settings.kata_check, kata_version=kata_version))
    return settings.validate()


def run(args: argparse.Namespace) -> int:
    from cc_gpu.dra.observe import setup_json_logging  # noqa: PLC0415
    from cc_gpu.dra.plugin import Plugin  # noqa: PLC0415
    from cc_gpu.errors import CcGpuError  # noqa: PLC0415
    from cc_gpu.kube.errors import KubeConfigError  # noqa: PLC0415

    try:
        settings = settings_from(args, dict(os.environ))
    except CcGpuError as e:
        raise CliError(str(e), kind=type(e).__name__) from None
    setup_json_logging(settings.log_level)
    try:
        from cc_gpu.dra.hostport import build_host  # noqa: PLC0415
        from cc_gpu.kube.client import KubernetesApi  # noqa: PLC0415

        if settings.nvml_library and not settings.sim:
            from cc_gpu.host.nvml import preload_library  # noqa: PLC0415

            preload_library(settings.nvml_library)
        if not settings.sim:
            print(f"cc-gpu plugin: acts on the real host: sysfs {settings.sysfs_root}, /dev {settings.dev_root}, "
                  f"/proc {settings.proc_root}", file=sys.stderr)
        kube = KubernetesApi(settings.kubeconfig)
        host_port, wait_for_change = build_host(settings, kube)
        attestation = None
        if settings.attestation.provider != "none":
            from cc_gpu.dra.attestsetup import build_attestation  # noqa: PLC0415

            attestation = build_attestation(settings, host_port.host, kube)
        plugin = Plugin(settings, host_port, kube, wait_for_change, attestation)
        return plugin.run_until_signalled()
    except KubeConfigError as e:
        raise CliError(str(e), kind=type(e).__name__) from None
    except CcGpuError as e:
        print(f"cc-gpu plugin: {e}", file=sys.stderr)
        return 1
