"""The Kata configuration check: each setting that keeps a VFIO GPU out of a confidential VM is named with its fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from cc_gpu.kata import (
    MAX_PCIE_PORTS,
    ColdPlugPath,
    KataConfigError,
    RuntimeClassKind,
    Severity,
    check_containerd,
    check_kata_config,
    go_path_match,
    infer_runtime_class,
    merge_layers,
    parse_toml,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"

SNP = RuntimeClassKind.SNP
TDX = RuntimeClassKind.TDX
PLAIN = RuntimeClassKind.PLAIN


def load(*paths: Path) -> dict[str, Any]:
    return merge_layers([parse_toml(str(p), p.read_text()) for p in paths])


GOOD_CONTAINERD = load(FIXTURES / "containerd-kata-deploy.toml",
                       REPO / "kata/containerd/cc-gpu-pod-annotations-v3.toml")


def good(kind: RuntimeClassKind) -> dict[str, Any]:
    name = {"plain": "", "snp": "-snp", "tdx": "-tdx"}[kind.value]
    return load(FIXTURES / f"configuration-qemu-nvidia-gpu{name}.toml", REPO / "kata/config.d/50-cc-gpu-vfio.toml")


def with_(kind: RuntimeClassKind, **changes: Any) -> dict[str, Any]:
    """The good configuration of `kind` with `section__key=value` changes (value None deletes the key)."""
    config = copy.deepcopy(good(kind))
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        table = config["hypervisor"]["qemu"] if section == "qemu" else config[section]
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return config


def codes(config: dict[str, Any], kind: RuntimeClassKind, **kwargs: Any) -> set[str]:
    kwargs.setdefault("containerd", GOOD_CONTAINERD)
    kwargs.setdefault("gpus", 1)
    report = check_kata_config(config, runtime_class=kind, **kwargs)
    return {f.code for f in report.findings}


@pytest.mark.parametrize("kind", list(RuntimeClassKind), ids=lambda k: k.value)
def test_shipped_config_with_our_drop_in_passes(kind: RuntimeClassKind) -> None:
    report = check_kata_config(good(kind), gpus=8, runtime_class=kind, containerd=GOOD_CONTAINERD)
    assert report.findings == ()
    assert report.ok and report.summary == "ok"


@pytest.mark.parametrize("kind", list(RuntimeClassKind), ids=lambda k: k.value)
def test_shipped_config_alone_keeps_dra_gpus_out(kind: RuntimeClassKind) -> None:
    """kata-deploy's configurations ask the kubelet, which released Kata reads only for device-plugin devices."""
    name = {"plain": "", "snp": "-snp", "tdx": "-tdx"}[kind.value]
    shipped = load(FIXTURES / f"configuration-qemu-nvidia-gpu{name}.toml")
    report = check_kata_config(shipped, gpus=1, runtime_class=kind, containerd=GOOD_CONTAINERD)
    assert [f.code for f in report.errors] == ["pod-resources-socket-set"]
    assert "pod_resource_api_sock = \"\"" in report.errors[0].fix


CASES: list[tuple[str, RuntimeClassKind, dict[str, Any], dict[str, Any], set[str]]] = [
    ("hot plug only on snp", SNP, {"qemu__cold_plug_vfio": "no-port", "qemu__hot_plug_vfio": "root-port"}, {},
     {"hot-plug-only"}),
    ("hot plug only on tdx", TDX, {"qemu__cold_plug_vfio": "no-port", "qemu__hot_plug_vfio": "root-port",
                                   "qemu__pcie_root_port": 8}, {}, {"hot-plug-only"}),
    ("hot plug is fine for the plain class", PLAIN, {"qemu__cold_plug_vfio": "no-port",
                                                     "qemu__hot_plug_vfio": "root-port"}, {}, set()),
    ("hot plug with too few root ports", PLAIN, {"qemu__cold_plug_vfio": "no-port", "qemu__hot_plug_vfio": "root-port",
                                                 "qemu__pcie_root_port": 2}, {"gpus": 4}, {"too-few-ports"}),
    ("hot plug counts audio functions", PLAIN, {"qemu__cold_plug_vfio": "no-port", "qemu__hot_plug_vfio": "root-port",
                                                "qemu__pcie_root_port": 8}, {"gpus": 8, "ports_per_gpu": 2},
     {"too-few-ports"}),
    ("no plug at all", PLAIN, {"qemu__cold_plug_vfio": None, "qemu__hot_plug_vfio": None}, {}, {"no-vfio-plug"}),
    ("no plug at all on snp", SNP, {"qemu__cold_plug_vfio": "no-port"}, {}, {"no-vfio-plug"}),
    ("hot and cold plug together", SNP, {"qemu__hot_plug_vfio": "root-port"}, {}, {"hot-and-cold-plug"}),
    ("bridge port", SNP, {"qemu__cold_plug_vfio": "bridge-port"}, {}, {"bridge-port"}),
    ("unknown port value", SNP, {"qemu__cold_plug_vfio": "root_port"}, {}, {"bad-port-value"}),
    ("more than 16 cold-plugged functions", SNP, {}, {"gpus": 9, "ports_per_gpu": 2}, {"too-many-devices"}),
    ("16 cold-plugged functions fit", SNP, {}, {"gpus": 8, "ports_per_gpu": 2}, set()),
    ("root ports above Kata's maximum", PLAIN, {"qemu__pcie_root_port": MAX_PCIE_PORTS + 1}, {}, {"ports-capped"}),
    ("negative root ports", PLAIN, {"qemu__pcie_root_port": -1}, {}, {"bad-port-count"}),
    ("confidential_guest off for snp", SNP, {"qemu__confidential_guest": False}, {}, {"not-confidential"}),
    ("confidential_guest missing for tdx", TDX, {"qemu__confidential_guest": None}, {}, {"not-confidential"}),
    ("snp flag off", SNP, {"qemu__sev_snp_guest": None}, {}, {"snp-off"}),
    ("snp flag on a tdx class", TDX, {"qemu__sev_snp_guest": True}, {}, {"snp-on-tdx"}),
    ("plain class made confidential", PLAIN, {"qemu__confidential_guest": True}, {}, {"plain-is-confidential"}),
    ("vfio mode", SNP, {"runtime__vfio_mode": "vfio"}, {}, {"vfio-mode"}),
    ("invalid vfio mode fails Kata's loading", SNP, {"runtime__vfio_mode": "passthrough"}, {}, {"bad-vfio-mode"}),
    ("nvrc.smi.srs=1 skips the GPU's attestation", TDX,
     {"qemu__kernel_params": "pci=realloc nvrc.smi.srs=1"}, {}, {"srs-skips-attestation"}),
    ("srs on the plain class is no finding", PLAIN, {"qemu__kernel_params": "nvrc.smi.srs=1"}, {}, set()),
    ("tenants may set kernel_params", SNP, {"qemu__enable_annotations": ["default_memory", "kernel_params"]}, {},
     {"kernel-params-annotation"}),
    ("a regex allowing every annotation", SNP, {"qemu__enable_annotations": [".*"]}, {}, {"kernel-params-annotation"}),
    ("annotations that leave kernel_params alone", SNP, {"qemu__enable_annotations": ["default_memory"]}, {}, set()),
    ("Kata version unknown", SNP, {}, {"kata_version": ""}, {"kata-version-unknown"}),
    ("Kata before the annotation path", SNP, {}, {"kata_version": "3.22.1"}, {"kata-too-old-annotations"}),
    ("Kata with the annotation path", SNP, {}, {"kata_version": "3.23.0"}, set()),
    ("containerd forwards every cdi.k8s.io key", SNP, {},
     {"containerd": load(FIXTURES / "containerd-kata-deploy.toml", FIXTURES / "containerd-cdi-wildcard.toml")},
     {"cdi-annotations-forwarded"}),
    ("socket set on the annotation path", SNP, {"runtime__pod_resource_api_sock": "/var/lib/kubelet/x.sock"}, {},
     {"pod-resources-socket-set"}),
    ("no socket on the pod-resources path", SNP, {}, {"path": ColdPlugPath.POD_RESOURCES}, {"no-pod-resources-socket"}),
    ("socket without declared DRA support", SNP,
     {"runtime__pod_resource_api_sock": "/var/lib/kubelet/pod-resources/kubelet.sock"},
     {"path": ColdPlugPath.POD_RESOURCES}, {"dra-support-unknown"}),
    ("DRA left out of the device sources", SNP,
     {"runtime__pod_resource_api_sock": "/var/lib/kubelet/pod-resources/kubelet.sock",
      "runtime__pod_resource_device_sources": ["device-plugin"]},
     {"path": ColdPlugPath.POD_RESOURCES}, {"dra-source-off"}),
    ("containerd not given", SNP, {}, {"containerd": None}, {"containerd-unchecked"}),
    ("containerd drops the annotation", SNP, {}, {"containerd": load(FIXTURES / "containerd-kata-deploy.toml")},
     {"cdi-annotation-filtered"}),
    ("containerd lacks the handler", SNP, {}, {"handler": "kata-qemu-nvidia-gpu-snp-runtime-rs"},
     {"no-containerd-runtime"}),
]


@pytest.mark.parametrize(("kind", "changes", "kwargs", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_problem_is_named(kind: RuntimeClassKind, changes: dict[str, Any], kwargs: dict[str, Any],
                               expected: set[str]) -> None:
    assert codes(with_(kind, **changes), kind, **kwargs) == expected


def test_pod_resources_path_with_dra_source_passes() -> None:
    config = load(FIXTURES / "configuration-qemu-nvidia-gpu-snp.toml",
                  REPO / "kata/config.d-pod-resources/50-cc-gpu-vfio.toml")
    report = check_kata_config(config, gpus=2, runtime_class=SNP, path=ColdPlugPath.POD_RESOURCES)
    assert report.findings == ()


@pytest.mark.parametrize(("dropin", "kind"), [("config.d-snp/60-cc-gpu-snp.toml", SNP),
                                              ("config.d-tdx/60-cc-gpu-tdx.toml", TDX)], ids=["snp", "tdx"])
def test_class_drop_ins_make_a_bare_configuration_confidential(dropin: str, kind: RuntimeClassKind) -> None:
    bare = with_(kind, qemu__confidential_guest=None, qemu__sev_snp_guest=None)
    fixed = merge_layers([bare, parse_toml(dropin, (REPO / "kata" / dropin).read_text())])
    assert codes(fixed, kind) == set()


def test_every_finding_carries_a_fix_and_errors_summarise() -> None:
    config = with_(SNP, qemu__confidential_guest=False, qemu__cold_plug_vfio="no-port", qemu__hot_plug_vfio="root-port")
    report = check_kata_config(config, gpus=1, runtime_class=SNP, containerd=GOOD_CONTAINERD)
    assert not report.ok
    assert all(f.fix and f.message and f.setting for f in report.findings)
    assert report.summary == "hot-plug-only,not-confidential"
    assert len(report.summary) <= 64
    assert all(f.severity is Severity.ERROR for f in report.errors)


def test_no_hypervisor_table_and_other_hypervisors() -> None:
    assert "no-hypervisor" in codes({"runtime": {}}, SNP)
    assert "not-qemu" in codes({"hypervisor": {"clh": {"confidential_guest": True, "cold_plug_vfio": "root-port"}},
                                "runtime": {}}, TDX)


def test_nonsense_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        check_kata_config(good(SNP), gpus=0, runtime_class=SNP)


INFER = [
    ("snp by file name", {}, "configuration-qemu-nvidia-gpu-snp.toml", SNP),
    ("tdx by file name", {}, "configuration-qemu-nvidia-gpu-tdx.toml", TDX),
    ("snp by flags", {"hypervisor": {"qemu": {"confidential_guest": True, "sev_snp_guest": True}}}, "c.toml", SNP),
    ("tdx by flags", {"hypervisor": {"qemu": {"confidential_guest": True}}}, "c.toml", TDX),
    ("plain", {"hypervisor": {"qemu": {}}}, "configuration-qemu-nvidia-gpu.toml", PLAIN),
]


@pytest.mark.parametrize(("config", "name", "expected"), [c[1:] for c in INFER], ids=[c[0] for c in INFER])
def test_runtime_class_is_inferred(config: dict[str, Any], name: str, expected: RuntimeClassKind) -> None:
    assert infer_runtime_class(config, name) is expected


MATCH = [
    ("prefix star", "cdi.k8s.io/*", True),
    ("exact", "cdi.k8s.io/cc-gpu", True),
    ("star does not cross slash", "*", False),
    ("kata only", "io.katacontainers.*", False),
    ("question mark", "cdi.k8s.io/cc-gp?", True),
    ("class", "cdi.k8s.io/[a-c]c-gpu", True),
    ("negated class", "cdi.k8s.io/[^c]c-gpu", False),
    ("unterminated class", "cdi.k8s.io/[cc-gpu", False),
    ("escaped star is literal", "cdi.k8s.io/\\*", False),
]


@pytest.mark.parametrize(("pattern", "expected"), [c[1:] for c in MATCH], ids=[c[0] for c in MATCH])
def test_containerd_patterns_match_like_go(pattern: str, expected: bool) -> None:
    assert go_path_match(pattern, "cdi.k8s.io/cc-gpu") is expected


def test_containerd_1_7_layout_is_read() -> None:
    v2 = load(REPO / "kata/containerd/cc-gpu-pod-annotations-v2.toml")
    assert check_containerd(v2, "kata-qemu-nvidia-gpu-tdx") == []


def test_layers_merge_tables_and_replace_values() -> None:
    merged = merge_layers([{"a": {"x": 1, "y": [1]}, "b": 1}, {"a": {"y": [2], "z": {"k": 1}}}, {"b": 2}])
    assert merged == {"a": {"x": 1, "y": [2], "z": {"k": 1}}, "b": 2}


def test_bad_toml_is_a_typed_error() -> None:
    with pytest.raises(KataConfigError, match=r"broken\.toml: not valid TOML"):
        parse_toml("broken.toml", "[hypervisor.qemu\ncold_plug_vfio = ")
