"""Reading a node's files for the Kata check: where configurations are found, drop-ins, and the node summary."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cc_gpu.kata import KataConfigError
from cc_gpu.kata_node import check_node, find_configs, node_summary, read_kata_config

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
OPT = "opt/kata/share/defaults/kata-containers"


def install(root: Path, directory: str, *suffixes: str) -> None:
    (root / directory).mkdir(parents=True, exist_ok=True)
    for suffix in suffixes:
        shutil.copy(FIXTURES / f"configuration-qemu-nvidia-gpu{suffix}.toml", root / directory)


def test_etc_overrides_the_shipped_defaults(tmp_path: Path) -> None:
    install(tmp_path, OPT, "", "-snp", "-tdx")
    install(tmp_path, "etc/kata-containers", "-snp")
    assert [p.relative_to(tmp_path).as_posix() for p in find_configs(tmp_path)] == [
        f"{OPT}/configuration-qemu-nvidia-gpu.toml",
        "etc/kata-containers/configuration-qemu-nvidia-gpu-snp.toml",
        f"{OPT}/configuration-qemu-nvidia-gpu-tdx.toml",
    ]


def test_drop_ins_apply_in_name_order(tmp_path: Path) -> None:
    install(tmp_path, OPT, "-snp")
    drop_ins = tmp_path / OPT / "config.d"
    drop_ins.mkdir()
    (drop_ins / "10-first.toml").write_text('[runtime]\nvfio_mode = "vfio"\n')
    (drop_ins / "20-second.toml").write_text('[runtime]\nvfio_mode = "guest-kernel"\n[hypervisor.qemu]\nx = 1\n')
    (drop_ins / "ignored.txt").write_text("not toml")
    config = read_kata_config(tmp_path / OPT / "configuration-qemu-nvidia-gpu-snp.toml")
    assert config["runtime"]["vfio_mode"] == "guest-kernel"
    assert config["hypervisor"]["qemu"]["x"] == 1
    assert config["hypervisor"]["qemu"]["sev_snp_guest"] is True


SUMMARIES = [
    ("nothing installed", [], "none"),
    ("shipped configurations", ["", "-snp"], "plain:pod-resources-socket-set;snp:pod-resources-socket-set"),
]


@pytest.mark.parametrize(("suffixes", "expected"), [c[1:] for c in SUMMARIES], ids=[c[0] for c in SUMMARIES])
def test_node_summary(tmp_path: Path, suffixes: list[str], expected: str) -> None:
    install(tmp_path, OPT, *suffixes)
    containerd = [REPO / "kata/containerd/cc-gpu-pod-annotations-v3.toml"]
    assert node_summary(check_node(gpus=1, root=tmp_path, containerd_configs=containerd)) == expected


def test_summary_fits_an_attribute_and_ok_when_fixed(tmp_path: Path) -> None:
    install(tmp_path, OPT, "", "-snp", "-tdx")
    reports = check_node(gpus=1, root=tmp_path)  # no containerd file: a warning only
    long = node_summary(reports)
    assert long == "fail:plain,snp,tdx"
    (tmp_path / OPT / "config.d").mkdir()
    shutil.copy(REPO / "kata/config.d/50-cc-gpu-vfio.toml", tmp_path / OPT / "config.d")
    assert node_summary(check_node(gpus=1, root=tmp_path)) == "ok"


def test_unreadable_file_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(KataConfigError, match="cannot read"):
        check_node(gpus=1, configs=[tmp_path / "missing.toml"])
