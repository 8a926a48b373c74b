"""The plugin's startup Kata check: can this node's Kata configuration carry the GPUs it advertises into a VM?

A GPU the plugin prepares perfectly still never reaches the guest when the node's Kata or containerd configuration
is wrong (hot plug only, the PodResources socket set, too few PCIe root ports, missing confidential-guest flags), and
the symptom is a pod stuck in sandbox creation, far from its cause. So at startup the plugin runs the same check as
`cc-gpu kata check` (`cc_gpu.kata_node`) on the node's files, logs every finding with its fix, and publishes a one-line
verdict as the device attribute `kataCheck` (`ok`, `none` when no NVIDIA GPU configuration is installed, or the
failing classes and codes), so an admin sees it with `kubectl get resourceslices` and a DeviceClass could select on it.

The files are read under a host root (`kata_root`: `/` on a node, the host mount in a container, the sim tree on a
simulated node), never from absolute paths. The check only informs: a finding or an unreadable file never stops the
plugin (an unreadable file is published as `error`), because a node can be fixed while the plugin runs.

With binding conditions the early bind runs the check again for the claim's own handler and GPUs (`check_handler`)
and refuses the claim when it fails: `VfioFailed` with reason `KataCheckFailed` and the finding, so the scheduler
tries another node before the pod is bound, instead of the pod failing in sandbox creation. The GPU is not
quarantined: the cause is the node's configuration, not the GPU, and it is checked afresh on every early bind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cc_gpu.errors import CcGpuError
from cc_gpu.kata import KataConfigError, RuntimeClassKind, Severity
from cc_gpu.kata_node import check_node, node_summary

log = logging.getLogger("cc_gpu.dra.katacheck")

ATTRIBUTE = "kataCheck"
ERROR_SUMMARY = "error"


@dataclass(frozen=True)
class KataCheckSettings:
    """`kata_check` (on/off) and where the node's files are."""

    enabled: bool = True
    root: Path | None = None  # None: the sim tree on a simulated node, else `/`
    containerd_configs: tuple[Path, ...] = ()  # default: <root>/etc/containerd/config.toml when present
    kata_version: str = ""  # the node's Kata release when it cannot be read from <root>/opt/kata/VERSION


@dataclass(frozen=True)
class KataCheckResult:
    summary: str  # at most 64 characters: a ResourceSlice string attribute
    findings: int  # errors and warnings logged


def _under(root: Path, paths: tuple[Path, ...]) -> tuple[Path, ...]:
    """The node's containerd configuration paths as seen under `root` (the host's filesystem in the plugin's pod)."""
    return tuple(root / p.relative_to(p.anchor) if p.is_absolute() else root / p for p in paths)


def run_kata_check(
    root: Path,
    gpus: int,
    containerd_configs: tuple[Path, ...] = (),
    *,
    functions: int | None = None,
    kata_version: str | None = None,
    node_iommufd: bool | None = None,
    kubelet_root: Path | None = None,
) -> KataCheckResult:
    """Check every NVIDIA GPU configuration under `root` for pods of up to `gpus` GPUs; log what is found.

    `functions` counts ports as Kata does: every PCIe function of the node's GPU groups can be cold-plugged into one
    pod's VM, and Kata creates max(functions, pcie_root_port) root ports, refusing more than 16 functions.
    """
    configs = _under(root, containerd_configs)
    try:
        reports = check_node(gpus=max(1, gpus), root=root, containerd_configs=configs, functions=functions,
                             kata_version=kata_version or None, node_iommufd=node_iommufd, kubelet_root=kubelet_root)
    except KataConfigError as e:
        log.warning("kata check: a configuration file cannot be read", extra={"error": str(e)})
        return KataCheckResult(ERROR_SUMMARY, 1)
    findings = 0
    for node_report in reports:
        report = node_report.report
        for finding in report.findings:
            findings += 1
            level = logging.WARNING if finding.severity is Severity.ERROR else logging.INFO
            log.log(level, "kata check finding", extra={
                "config": str(node_report.config.relative_to(root)), "runtime_class": report.runtime_class.value,
                "code": finding.code, "severity": finding.severity.value, "setting": finding.setting,
                "finding": finding.message, "fix": finding.fix})
    summary = node_summary(reports)
    log.info("kata check done", extra={"kata_check": summary, "configs": len(reports), "gpus": max(1, gpus),
                                       "functions": functions or max(1, gpus),
                                       "kata_version": next((r.report.kata_version for r in reports), None)})
    return KataCheckResult(summary, findings)


class KataCheckFailedError(CcGpuError):
    """The node's Kata configuration for the pod's handler would not carry the GPUs into the VM (the early bind
    refuses the claim, so the scheduler tries elsewhere instead of the pod sticking in sandbox creation)."""


def check_handler(
    root: Path,
    handler: str,
    gpus: int,
    containerd_configs: tuple[Path, ...] = (),
    *,
    functions: int | None = None,
    kata_version: str | None = None,
    node_iommufd: bool | None = None,
    kubelet_root: Path | None = None,
) -> str | None:
    """The Kata check for one claim's handler and GPUs, now (the node may have been fixed, or broken, since startup).

    Returns None when it passes or does not apply (a handler that is not one of the NVIDIA GPU runtime classes, or no
    configuration for it installed: the startup check publishes `none` then), else the failing verdict: the error
    codes, or `error` with the reason when a configuration file cannot be read.
    """
    kind = next((k for k in RuntimeClassKind if k.handler == handler), None)
    if kind is None:
        return None
    configs = _under(root, containerd_configs)
    try:
        reports = check_node(gpus=max(1, gpus), root=root, containerd_configs=configs, runtime_class=kind,
                             handler=handler, functions=functions, kata_version=kata_version or None,
                             node_iommufd=node_iommufd, kubelet_root=kubelet_root)
    except KataConfigError as e:
        return f"{ERROR_SUMMARY}: {e}"
    failing = [r.report for r in reports if not r.report.ok]
    if not failing:
        return None
    for report in failing:
        for finding in report.errors:
            log.warning("kata check finding for an early bind", extra={
                "runtime_class": report.runtime_class.value, "handler": handler, "code": finding.code,
                "finding": finding.message, "fix": finding.fix})
    return "; ".join(f"{r.summary}: {r.errors[0].message}" for r in failing)
