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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cc_gpu.kata import KataConfigError, Severity
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
    configs = tuple(root / p.relative_to(p.anchor) if p.is_absolute() else root / p for p in containerd_configs)
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
