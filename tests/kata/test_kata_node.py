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
    (drop_ins / "30-not-toml-suffix.conf").write_text('[runtime]\nenable_debug = true\n')  # Kata reads it too
    config = read_kata_config(tmp_path / OPT / "configuration-qemu-nvidia-gpu-snp.toml")
    assert config["runtime"]["vfio_mode"] == "guest-kernel"
    assert config["runtime"]["enable_debug"] is True
    assert config["hypervisor"]["qemu"]["x"] == 1
    assert config["hypervisor"]["qemu"]["sev_snp_guest"] is True


@pytest.mark.parametrize("entry", ["README.txt", "subdir"])
def test_a_non_toml_entry_in_config_d_aborts_as_in_kata(tmp_path: Path, entry: str) -> None:
    install(tmp_path, OPT, "-snp")
    drop_ins = tmp_path / OPT / "config.d"
    drop_ins.mkdir()
    if entry == "subdir":
        (drop_ins / entry).mkdir()
    else:
        (drop_ins / entry).write_text("copy these files into config.d\n")
    with pytest.raises(KataConfigError, match="aborts loading"):
        read_kata_config(tmp_path / OPT / "configuration-qemu-nvidia-gpu-snp.toml")


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


RUNTIMES = f"{OPT}/runtimes"
SHIMS = {"": "qemu-nvidia-gpu", "-snp": "qemu-nvidia-gpu-snp", "-tdx": "qemu-nvidia-gpu-tdx"}


def kata_deploy_3_29(root: Path, *, containerd_major: int = 2, absolute_links: bool = False) -> None:
    """A node as kata-deploy 3.29 leaves it: each shim's configuration under runtimes/<shim>/ with its own config.d/,
    the old path a relative symlink to it, containerd's runtimes in an imported drop-in whose ConfigPath names the old
    path; our drop-in and annotation allow-list installed the way kata/README.md says."""
    for suffix, shim in SHIMS.items():
        directory = root / RUNTIMES / shim
        (directory / "config.d").mkdir(parents=True)
        name = f"configuration-{shim}.toml"
        shutil.copy(FIXTURES / f"configuration-qemu-nvidia-gpu{suffix}.toml", directory / name)
        shutil.copy(REPO / "kata/config.d/50-cc-gpu-vfio.toml", directory / "config.d")
        target = f"/{RUNTIMES}/{shim}/{name}" if absolute_links else f"runtimes/{shim}/{name}"
        (root / OPT / name).symlink_to(target)
    (root / "opt/kata/VERSION").write_text("3.29.0\n")
    runtimes = "".join(
        f"[plugins.'{plugin}'.containerd.runtimes.kata-{shim}]\n"
        f'runtime_type = "io.containerd.kata-{shim}.v2"\n'
        f'pod_annotations = ["io.katacontainers.*", "cdi.k8s.io/cc-gpu"]\n'
        f"[plugins.'{plugin}'.containerd.runtimes.kata-{shim}.options]\n"
        f'ConfigPath = "/{OPT}/configuration-{shim}.toml"\n'
        for shim in SHIMS.values()
        for plugin in (["io.containerd.cri.v1.runtime"] if containerd_major == 2 else ["io.containerd.grpc.v1.cri"])
    )
    drop_in = root / "opt/kata/containerd/config.d/kata-deploy.toml"
    drop_in.parent.mkdir(parents=True)
    version = 3 if containerd_major == 2 else 2
    cdi = "" if containerd_major == 2 else "[plugins.'io.containerd.grpc.v1.cri']\nenable_cdi = true\n"
    drop_in.write_text(f"version = {version}\n{cdi}{runtimes}")
    (root / "etc/containerd").mkdir(parents=True)
    (root / "etc/containerd/config.toml").write_text(
        f'version = {version}\nimports = ["/opt/kata/containerd/config.d/*.toml"]\n')


@pytest.mark.parametrize("absolute_links", [False, True], ids=["relative symlinks", "absolute symlinks"])
@pytest.mark.parametrize("containerd_major", [1, 2], ids=["containerd 1.7", "containerd 2.x"])
def test_kata_deploy_3_29_layout_is_read_as_the_shim_reads_it(tmp_path: Path, containerd_major: int,
                                                               absolute_links: bool) -> None:
    kata_deploy_3_29(tmp_path, containerd_major=containerd_major, absolute_links=absolute_links)
    # A drop-in beside the symlink is not read: Kata takes config.d beside the resolved file.
    (tmp_path / OPT / "config.d").mkdir()
    (tmp_path / OPT / "config.d" / "99-not-read.toml").write_text('[runtime]\nvfio_mode = "bogus"\n')
    reports = check_node(gpus=1, root=tmp_path)
    assert [(r.report.runtime_class.value, r.report.ok, r.report.kata_version) for r in reports] == [
        ("plain", True, "3.29.0"), ("snp", True, "3.29.0"), ("tdx", True, "3.29.0")]
    for r in reports:
        assert r.resolved is not None and r.resolved.is_relative_to(tmp_path / RUNTIMES), r.resolved
        assert not r.report.findings, r.report.findings


def test_containerd_1_7_without_enable_cdi_is_named(tmp_path: Path) -> None:
    kata_deploy_3_29(tmp_path, containerd_major=1)
    drop_in = tmp_path / "opt/kata/containerd/config.d/kata-deploy.toml"
    drop_in.write_text(drop_in.read_text().replace("enable_cdi = true", "enable_cdi = false"))
    codes = {f.code for r in check_node(gpus=1, root=tmp_path) for f in r.report.findings}
    assert codes == {"cdi-disabled"}


def test_symlinks_never_leave_the_host_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    kata_deploy_3_29(root, absolute_links=True)
    # An absolute target on this machine would be /opt/kata/...: it must be read under the host root instead.
    (root / OPT / "configuration-qemu-nvidia-gpu-snp.toml").unlink()
    (root / OPT / "configuration-qemu-nvidia-gpu-snp.toml").symlink_to("../../../../../../../../../etc/passwd")
    with pytest.raises(KataConfigError, match=str(root / "etc" / "passwd")):
        check_node(gpus=1, root=root)


def test_ports_are_counted_per_function_as_kata_does(tmp_path: Path) -> None:
    kata_deploy_3_29(tmp_path)
    assert all(r.report.ok for r in check_node(gpus=8, root=tmp_path, functions=16))
    codes = {f.code for r in check_node(gpus=8, root=tmp_path, functions=17) for f in r.report.errors}
    assert codes == {"too-many-devices"}


@pytest.mark.parametrize(("version", "expected"), [
    ("3.22.0", {"kata-too-old-annotations"}),
    ("3.14.0", {"kata-too-old-annotations", "kata-no-iommufd"}),
    ("3.23.0", set()),
])
def test_minimum_kata_versions(tmp_path: Path, version: str, expected: set[str]) -> None:
    kata_deploy_3_29(tmp_path)
    (tmp_path / "opt/kata/VERSION").write_text(version + "\n")
    reports = {r.report.runtime_class.value: {f.code for f in r.report.errors}
               for r in check_node(gpus=1, root=tmp_path)}
    assert reports["snp"] == expected
    assert reports["plain"] == expected - {"kata-no-iommufd"}


def test_confidential_class_on_a_node_without_iommufd(tmp_path: Path) -> None:
    kata_deploy_3_29(tmp_path)
    reports = {r.report.runtime_class.value: {f.code for f in r.report.errors}
               for r in check_node(gpus=1, root=tmp_path, node_iommufd=False)}
    assert reports == {"plain": set(), "snp": {"confidential-needs-iommufd"}, "tdx": {"confidential-needs-iommufd"}}
