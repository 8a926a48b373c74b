"""The plugin's startup Kata check, through the real plugin process on a simulated node and the API-server double.

Kata and containerd files are installed in the simulated host's tree (or another root given with `--kata-root`),
where the plugin reads them as it would read a node's through its host mount; the verdict must appear as the
`kataCheck` attribute of every published device and each finding in the log with its fix.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.dra.harness import DRIVER, NODE, REPO, Node

FIXTURES = REPO / "tests" / "kata" / "fixtures"
OPT = "opt/kata/share/defaults/kata-containers"
ALL_CLASSES = ("", "-snp", "-tdx")


def install(root: Path, *suffixes: str, fixed: bool = False) -> None:
    """kata-deploy's shipped NVIDIA configurations under `root`; `fixed` adds our drop-in and containerd settings."""
    (root / OPT).mkdir(parents=True, exist_ok=True)
    for suffix in suffixes:
        shutil.copy(FIXTURES / f"configuration-qemu-nvidia-gpu{suffix}.toml", root / OPT)
    if fixed:
        (root / OPT / "config.d").mkdir(exist_ok=True)
        shutil.copy(REPO / "kata/config.d/50-cc-gpu-vfio.toml", root / OPT / "config.d")
        (root / "etc/containerd").mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "kata/containerd/cc-gpu-pod-annotations-v3.toml", root / "etc/containerd/config.toml")


def shipped(node: Node) -> list[str]:
    install(node.sim_root, *ALL_CLASSES)
    return []


def fixed_elsewhere(node: Node) -> list[str]:
    root = node.root / "host"
    install(root, *ALL_CLASSES, fixed=True)
    install(node.sim_root, *ALL_CLASSES)  # not read: --kata-root wins over the sim tree
    return ["--kata-root", str(root)]


def nothing(node: Node) -> list[str]:
    return []


def unparsable(node: Node) -> list[str]:
    install(node.sim_root, "-snp")
    (node.sim_root / OPT / "config.d").mkdir()
    (node.sim_root / OPT / "config.d" / "60-broken.toml").write_text("[hypervisor.qemu\n")
    return []


def switched_off(node: Node) -> list[str]:
    install(node.sim_root, *ALL_CLASSES)
    return ["--kata-check", "off"]


CASES: list[tuple[str, Callable[[Node], list[str]], str | None, str | None]] = [
    # name, set-up (returns extra flags), published summary, a log line that must appear
    ("shipped configurations fail", shipped, "fail:plain,snp,tdx", '"fix": '),
    ("fixed configuration under --kata-root", fixed_elsewhere, "ok", '"kata_check": "ok"'),
    ("no kata installed", nothing, "none", '"configs": 0'),
    ("unparsable drop-in", unparsable, "error", "cannot be read"),
    ("switched off", switched_off, None, None),
]


@pytest.mark.parametrize(("setup", "summary", "logged"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_kata_check_is_published_on_every_device(
    node: Node, setup: Callable[[Node], list[str]], summary: str | None, logged: str | None
) -> None:
    node.start_plugin(*setup(node))
    (published,) = node.api.list_resource_slices(DRIVER, NODE)
    values = {d["attributes"].get("kataCheck", {}).get("string") for d in published["spec"]["devices"]}
    assert values == {summary}
    log = node.log_path.read_text()
    if logged:
        assert logged in log
    else:
        assert "kata check" not in log
    assert node.stop_plugin() == 0


def test_findings_are_logged_with_their_fix(node: Node) -> None:
    install(node.sim_root, "-snp")
    node.start_plugin()
    lines = [json.loads(line) for line in node.log_path.read_text().splitlines() if line.startswith("{")]
    findings = [entry for entry in lines if entry.get("msg") == "kata check finding"]
    assert findings
    for entry in findings:
        assert entry["runtime_class"] == "snp"
        assert entry["config"] == f"{OPT}/configuration-qemu-nvidia-gpu-snp.toml"
        assert entry["fix"]
    assert {e["severity"] for e in findings} <= {"error", "warning"}
    assert node.stop_plugin() == 0


def test_ports_are_counted_per_function(tmp_path: Path) -> None:
    """Kata gives every cold-plugged PCIe function a root port: the GPU's audio function counts too."""
    from tests.dra.harness import simulated_node  # noqa: PLC0415

    with simulated_node(tmp_path, "h100-pcie-audio") as audio:
        install(audio.sim_root, "-snp", fixed=True)
        (audio.sim_root / "opt/kata/VERSION").write_text("3.29.0\n")
        audio.start_plugin()
        lines = [json.loads(line) for line in audio.log_path.read_text().splitlines() if line.startswith("{")]
        (done,) = [e for e in lines if e.get("msg") == "kata check done"]
        assert (done["gpus"], done["functions"], done["kata_version"]) == (1, 2, "3.29.0")
        assert done["kata_check"] == "ok"
        assert audio.stop_plugin() == 0
