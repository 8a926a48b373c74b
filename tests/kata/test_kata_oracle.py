"""`cc-gpu kata check` against Kata's own configuration loader (tests/kata/oracle.py).

Every kata check fixture is written out as Kata would find it on a node and loaded by `katautils.LoadConfiguration`,
Kata's code, at the pinned commit; the tests assert that our check agrees: it reports a load-time error exactly when
Kata refuses the configuration, and otherwise it reads the same settings Kata uses (cold/hot plug, ports after Kata's
cap, confidential flags, vfio_mode, enable_annotations, the attestation-skipping kernel parameter). Rules applied at
VM creation (`createPCIeTopology`: functions above 16, a legacy group node for a confidential guest) are not in the
loader and stay tested against Kata's code as read (tests/kata/test_kata_check.py).
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cc_gpu.kata import LOAD_ERRORS, KataConfigError, RuntimeClassKind, check_kata_config, effective_settings
from cc_gpu.kata_node import check_node, config_path_for, host_path, read_containerd, read_kata_config
from tests.kata import oracle
from tests.kata.test_kata_check import CASES, good, with_
from tests.kata.test_kata_node import OPT, RUNTIMES, SHIMS, kata_deploy_3_29

KINDS = {"": RuntimeClassKind.PLAIN, "-snp": RuntimeClassKind.SNP, "-tdx": RuntimeClassKind.TDX}


@pytest.fixture(scope="module")
def kata_loader() -> Path:
    return oracle.build()


def kata(binary: Path, path: Path, merged: dict[str, Any]) -> dict[str, Any]:
    return oracle.load(binary, path, oracle.stub_paths(merged))


def agree(ours: dict[str, Any], kind: RuntimeClassKind, theirs: dict[str, Any], where: str) -> None:
    """Our verdict and reading of a merged configuration against Kata's."""
    report = check_kata_config(ours, gpus=1, runtime_class=kind, containerd={})
    load_errors = {f.code for f in report.errors} & LOAD_ERRORS
    assert bool(load_errors) is not theirs["ok"], f"{where}: ours {load_errors or 'loads'}, Kata {theirs}"
    if not theirs["ok"]:
        return
    h = theirs["hypervisor"]
    kata_view = {
        "cold_plug_vfio": h["cold_plug_vfio"], "hot_plug_vfio": h["hot_plug_vfio"],
        "pcie_root_port": h["pcie_root_port"], "pcie_switch_port": h["pcie_switch_port"],
        "confidential_guest": h["confidential_guest"], "sev_snp_guest": h["sev_snp_guest"],
        "srs": "nvrc.smi.srs=1" in h["kernel_params"], "enable_annotations": h["enable_annotations"],
        "vfio_mode": theirs["vfio_mode"],
    }
    assert effective_settings(ours) == kata_view, where


ORACLE_CASES = [c for c in CASES if not c[3] or set(c[3]) <= {"gpus", "ports_per_gpu", "path"}]


@pytest.mark.parametrize(("kind", "changes"), [(c[1], c[2]) for c in ORACLE_CASES], ids=[c[0] for c in ORACLE_CASES])
def test_every_check_fixture_agrees_with_katas_loader(kata_loader: Path, tmp_path: Path, kind: RuntimeClassKind,
                                                      changes: dict[str, Any]) -> None:
    config = with_(kind, **changes)
    path = tmp_path / "configuration.toml"
    path.write_text(tomli_w.dumps(config))
    agree(config, kind, kata(kata_loader, path, config), str(changes))


DROP_INS = {
    "shipped": [],
    "with our drop-in": ["kata/config.d/50-cc-gpu-vfio.toml"],
    "with the pod-resources drop-in": ["kata/config.d-pod-resources/50-cc-gpu-vfio.toml"],
    "with our drop-in and the class drop-ins": [
        "kata/config.d/50-cc-gpu-vfio.toml",
        "kata/config.d-snp/60-cc-gpu-snp.toml",
        "kata/config.d-tdx/60-cc-gpu-tdx.toml",
    ],
}


@pytest.mark.parametrize("suffix", sorted(KINDS))
@pytest.mark.parametrize("variant", sorted(DROP_INS))
def test_shipped_configurations_and_our_drop_ins(kata_loader: Path, tmp_path: Path, suffix: str, variant: str) -> None:
    repo = Path(__file__).resolve().parents[2]
    path = tmp_path / f"configuration-qemu-nvidia-gpu{suffix}.toml"
    shutil.copy(Path(__file__).parent / "fixtures" / path.name, path)
    drop_ins = [d for d in DROP_INS[variant] if ("config.d-snp" not in d and "config.d-tdx" not in d)
                or f"config.d{suffix}/" in d]  # a class drop-in only beside its own class
    if drop_ins:
        (tmp_path / "config.d").mkdir()
        for drop_in in drop_ins:
            shutil.copy(repo / drop_in, tmp_path / "config.d")
    ours = read_kata_config(path)
    agree(ours, KINDS[suffix], kata(kata_loader, path, ours), f"{path.name} {variant}")
    if variant == "with our drop-in":
        assert ours == good(KINDS[suffix])


@pytest.mark.parametrize("containerd_major", [1, 2], ids=["containerd 1.7", "containerd 2.x"])
def test_kata_deploy_3_29_layout_through_containerd_config_path(kata_loader: Path, tmp_path: Path,
                                                                containerd_major: int) -> None:
    """Kata is given what containerd gives the shim (ConfigPath, a symlink); both read config.d beside its target."""
    kata_deploy_3_29(tmp_path, containerd_major=containerd_major)
    (tmp_path / OPT / "config.d").mkdir()
    (tmp_path / OPT / "config.d" / "99-not-read.toml").write_text('[runtime]\nvfio_mode = "bogus"\n')
    containerd = read_containerd([], tmp_path)
    reports = {r.report.runtime_class: r for r in check_node(gpus=1, root=tmp_path)}
    for suffix, shim in SHIMS.items():
        configured = config_path_for(containerd, f"kata-{shim}")
        assert configured is not None
        # The host root is this test's directory: give Kata the same symlink, relative so it resolves here too.
        link = tmp_path / configured.lstrip("/")
        ours = read_kata_config(host_path(tmp_path, link))
        theirs = kata(kata_loader, link, ours)
        assert theirs["ok"], theirs
        assert Path(theirs["resolved"]) == tmp_path / RUNTIMES / shim / f"configuration-{shim}.toml"
        assert reports[KINDS[suffix]].resolved == Path(theirs["resolved"])
        agree(ours, KINDS[suffix], theirs, shim)


@pytest.mark.parametrize("entry", ["README.txt", "subdir"])
def test_a_non_toml_entry_in_config_d_aborts_both(kata_loader: Path, tmp_path: Path, entry: str) -> None:
    path = tmp_path / "configuration-qemu-nvidia-gpu-snp.toml"
    shutil.copy(Path(__file__).parent / "fixtures" / path.name, path)
    (tmp_path / "config.d").mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "kata/config.d/50-cc-gpu-vfio.toml", tmp_path / "config.d")
    if entry == "subdir":
        (tmp_path / "config.d" / entry).mkdir()
    else:
        (tmp_path / "config.d" / entry).write_text("copy these files into config.d\n")
    theirs = kata(kata_loader, path, tomllib.loads(path.read_text()))
    assert not theirs["ok"] and entry in theirs["error"], theirs
    with pytest.raises(KataConfigError, match="aborts loading"):
        read_kata_config(path)
