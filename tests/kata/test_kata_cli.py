"""`cc-gpu kata check` on a node layout: default paths, config.d drop-ins, containerd, exit codes and JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
KATA_DIR = "opt/kata/share/defaults/kata-containers"


def cc_gpu(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "cc_gpu", "kata", "check", *args],
                          capture_output=True, text=True, env=env, check=False)


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A host root as kata-deploy leaves it: the three NVIDIA GPU configurations and containerd's configuration."""
    kata = tmp_path / KATA_DIR
    kata.mkdir(parents=True)
    for name in ("", "-snp", "-tdx"):
        shutil.copy(FIXTURES / f"configuration-qemu-nvidia-gpu{name}.toml", kata)
    (tmp_path / "etc/containerd").mkdir(parents=True)
    shutil.copy(FIXTURES / "containerd-kata-deploy.toml", tmp_path / "etc/containerd/config.toml")
    (tmp_path / "opt/kata/VERSION").write_text("3.29.0\n")  # kata-deploy writes `git describe` of the release
    return tmp_path


def install_fixes(root: Path) -> None:
    """What kata/README.md tells the admin to do: our drop-in in config.d/, containerd passing the annotation."""
    dropins = root / KATA_DIR / "config.d"
    dropins.mkdir()
    shutil.copy(REPO / "kata/config.d/50-cc-gpu-vfio.toml", dropins)
    config = root / "etc/containerd/config.toml"
    allowed = '["io.katacontainers.*", "cdi.k8s.io/cc-gpu"]'
    config.write_text(config.read_text().replace('["io.katacontainers.*"]', allowed))


def test_kata_deploy_defaults_fail_with_fixes(node: Path) -> None:
    out = cc_gpu("--root", str(node), "--gpus", "8")
    assert out.returncode == 1, out.stderr
    assert out.stdout.count("FAIL") == 3
    assert "pod-resources-socket-set" in out.stdout
    assert "cdi-annotation-filtered" in out.stdout
    assert 'fix: set pod_resource_api_sock = ""' in out.stdout


def test_documented_fixes_pass(node: Path) -> None:
    install_fixes(node)
    out = cc_gpu("--root", str(node), "--gpus", "8", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    reports = json.loads(out.stdout)
    assert [(r["class"], r["ok"], r["findings"], r["kata_version"]) for r in reports] == [
        ("plain", True, [], "3.29.0"), ("snp", True, [], "3.29.0"), ("tdx", True, [], "3.29.0")]


def test_no_drop_ins_ignores_config_d(node: Path) -> None:
    install_fixes(node)
    out = cc_gpu("--root", str(node), "--no-drop-ins", "--json")
    assert out.returncode == 1
    assert all(not r["ok"] for r in json.loads(out.stdout))


def test_explicit_files_class_and_json_findings(node: Path) -> None:
    config = node / KATA_DIR / "configuration-qemu-nvidia-gpu-tdx.toml"
    out = cc_gpu("--config", str(config), "--class", "snp", "--containerd-config",
                 str(REPO / "kata/containerd/cc-gpu-pod-annotations-v3.toml"), "--kata-version", "3.29.0", "--json")
    assert out.returncode == 1
    (report,) = json.loads(out.stdout)
    assert report["class"] == "snp"
    assert {f["code"] for f in report["findings"]} == {"snp-off", "pod-resources-socket-set"}
    assert all(f["severity"] == "error" and f["fix"] for f in report["findings"])


@pytest.mark.parametrize(("args", "message"), [
    (["--gpus", "0"], "at least 1"),
    (["--config", "/nonexistent/kata.toml"], "No such file"),
], ids=["zero gpus", "missing file"])
def test_bad_input_is_a_usage_error(args: list[str], message: str) -> None:
    out = cc_gpu(*args)
    assert out.returncode == 2
    assert message in out.stderr


def test_broken_toml_and_empty_root(tmp_path: Path) -> None:
    assert "no NVIDIA GPU Kata configuration" in cc_gpu("--root", str(tmp_path)).stderr
    broken = tmp_path / "configuration.toml"
    broken.write_text("[hypervisor.qemu\n")
    out = cc_gpu("--config", str(broken))
    assert out.returncode == 2
    assert "not valid TOML" in out.stderr
