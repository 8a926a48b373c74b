"""The RuntimeClass gate: only confidential Kata handlers, a TEE on the node, GPUs in CC mode; one pod; fail closed."""

from __future__ import annotations

from typing import Any

import pytest

from cc_gpu.dra.errors import GateRefusedError
from cc_gpu.dra.gate import GatePolicy, PodView, check_reserved_for, decide

SNP = {"metadata": {"name": "kata-qemu-nvidia-gpu-snp"}, "handler": "kata-qemu-nvidia-gpu-snp"}
RUNC = {"metadata": {"name": "runc"}, "handler": "runc"}
PLAIN_KATA = {"metadata": {"name": "kata-qemu-nvidia-gpu"}, "handler": "kata-qemu-nvidia-gpu"}
TDX = {"metadata": {"name": "tdx"}, "handler": "kata-qemu-nvidia-gpu-tdx"}
CUSTOM = {"metadata": {"name": "c"}, "handler": "kata-cc"}
ON_SNP = ("sev-snp",)


def pod(
    rc_name: str | None = "kata-qemu-nvidia-gpu-snp", rc: dict[str, Any] | None = SNP, found: bool = True
) -> PodView:
    return PodView("default/vm", found, rc_name, rc)


@pytest.mark.parametrize(
    ("name", "view", "policy", "tee", "modes", "message"),
    [
        ("missing pod", pod(found=False), GatePolicy(), ON_SNP, {"d": "on"}, "does not exist"),
        ("no runtimeClassName", pod(rc_name=None, rc=None), GatePolicy(), ON_SNP, {"d": "on"}, "no runtimeClassName"),
        (
            "missing RuntimeClass",
            pod(rc=None),
            GatePolicy(),
            ON_SNP,
            {"d": "on"},
            "RuntimeClass 'kata-qemu-nvidia-gpu-snp' does not exist",
        ),
        ("runc handler", pod("runc", RUNC), GatePolicy(), ON_SNP, {"d": "on"}, "handler 'runc', which is not allowed"),
        ("non-CC kata by default", pod("k", PLAIN_KATA), GatePolicy(), ON_SNP, {"d": "on"}, "not allowed"),
        ("no TEE", pod(), GatePolicy(), False, {"d": "on"}, "no TEE enabled"),
        ("CC mode off", pod(), GatePolicy(), ON_SNP, {"gpu-a": "on", "gpu-b": "off"}, "gpu-b (cc mode 'off')"),
        ("handler without object field", pod(rc={"metadata": {}}), GatePolicy(), ON_SNP, {"d": "on"}, "handler None"),
        ("TDX handler on an SNP-only node", pod("tdx", TDX), GatePolicy(), ON_SNP, {"d": "on"},
         "'kata-qemu-nvidia-gpu-tdx' needs tdx but this node has sev-snp"),
        ("SNP handler on a TDX-only node", pod(), GatePolicy(), ("tdx",), {"d": "on"}, "needs sev-snp"),
        ("a TEE of unknown kind does not satisfy a TDX handler", pod("tdx", TDX), GatePolicy(), True, {"d": "on"},
         "a TEE of unknown kind"),
        ("the admin maps a handler to its TEE", pod("c", CUSTOM), GatePolicy(
            allowed_handlers=("kata-cc",), confidential_handlers=("kata-cc",), handler_tees={"kata-cc": "tdx"}),
         ON_SNP, {"d": "on"}, "needs tdx"),
    ],
)
def test_refusals(name: str, view: PodView, policy: GatePolicy, tee: Any, modes: dict[str, str], message: str) -> None:
    with pytest.raises(GateRefusedError) as exc:
        decide(view, policy, tee, modes)
    assert message in str(exc.value), name


@pytest.mark.parametrize(
    ("name", "view", "policy", "tee", "modes", "confidential"),
    [
        ("snp, CC on", pod(), GatePolicy(), ON_SNP, {"d": "on"}, True),
        ("snp, protected PCIe", pod(), GatePolicy(), ON_SNP, {"d": "ppcie"}, True),
        (
            "admin allows plain kata: no CC requirement for it",
            pod("k", PLAIN_KATA),
            GatePolicy(allowed_handlers=("kata-qemu-nvidia-gpu", "kata-qemu-nvidia-gpu-snp")),
            False,
            {"d": "off"},
            False,
        ),
        ("admin waives CC mode", pod(), GatePolicy(require_cc_mode=False), ON_SNP, {"d": "off"}, True),
    ],
)
def test_acceptances(
    name: str, view: PodView, policy: GatePolicy, tee: Any, modes: dict[str, str], confidential: bool
) -> None:
    assert decide(view, policy, tee, modes).confidential is confidential, name


@pytest.mark.parametrize(
    ("name", "reserved_for", "message"),
    [
        ("empty", [], "not reserved for any pod"),
        (
            "two pods",
            [{"resource": "pods", "name": "a", "uid": "1"}, {"resource": "pods", "name": "b", "uid": "2"}],
            "a VFIO GPU goes to one VM",
        ),
        ("not a pod", [{"apiGroup": "apps", "resource": "deployments", "name": "d", "uid": "1"}], "not a pod"),
    ],
)
def test_reserved_for(name: str, reserved_for: list[dict[str, str]], message: str) -> None:
    with pytest.raises(GateRefusedError) as exc:
        check_reserved_for(reserved_for)
    assert message in str(exc.value), name


def test_single_pod_accepted() -> None:
    assert check_reserved_for([{"resource": "pods", "name": "vm", "uid": "u"}])["name"] == "vm"
