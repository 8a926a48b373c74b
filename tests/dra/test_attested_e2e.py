"""Attested claims end to end: the real plugin process, the kubelet double, the API-server double, simulated evidence.

One plugin serves a whole DGX-like node (8 GPUs behind NVSwitches) for the table of claims below, so the suite starts
one process; the temporary-rebind path runs on a node without NVSwitches. Every GPU gets its own simulated evidence;
bad-evidence knobs are set per PCI address before the plugin starts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cdi.schema import validate_cdi
from tests.dra.attested import (
    attest_config,
    attested_node,
    cdi_spec,
    check_token,
    condition,
    device_of,
    device_status,
    events_for,
    move_to_vfio,
    pod_uid_of,
)
from tests.dra.harness import DRIVER, NODE, Node

GOOD, TAMPERED, NO_VBIOS_RIM, REVOKED, ON_VFIO, PLAIN, OLD_DRIVER, SPARE = (
    "0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0",
    "0000:9a:00.0", "0000:ab:00.0", "0000:ba:00.0", "0000:db:00.0",
)
FAULTS = {TAMPERED: {"tamper_measurement": 5}, NO_VBIOS_RIM: {"missing_rim": "vbios"}, REVOKED: {"revoked": True}}


@pytest.fixture(scope="module")
def dgx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    # A GPU on vfio-pci shows CC mode `unknown` (its BAR is never read), so the gate's CC-mode check is left to
    # attestation on this node; otherwise the already-on-vfio claims would stop at the gate.
    settings = "allow_rebind = true\nallow_foreign_nonce = true\n[policy]\nrequire_cc_mode = false\n"
    with attested_node(tmp_path_factory.mktemp("dgx"), faults=FAULTS, settings=settings) as node:
        node.start_plugin()
        yield node


def _prepare(node: Node, bdf: str, **section: object) -> tuple[tuple[str, str, str], str]:
    config = [attest_config(**section)] if section else None
    claim = node.vm_pod_claim([device_of(bdf)], config=config)
    return claim, node.kubelet.prepare(DRIVER, [claim])[claim[2]].error


def _release(node: Node, claim: tuple[str, str, str]) -> None:
    assert node.kubelet.unprepare(DRIVER, [claim]) == {claim[2]: ""}


def assert_no_world_readable_file_holds(root: Path, secret: str) -> None:
    """No file a local user other than root can read (mode o+r, in o+x directories) holds `secret`."""
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o004:
            reachable = all(p.stat().st_mode & 0o001 for p in path.parents if p.is_relative_to(root) and p != root)
            assert not (reachable and secret.encode() in path.read_bytes()), path


def _assert_rejected(node: Node, claim: tuple[str, str, str], error: str, bdf: str, *named: str) -> None:
    assert error.startswith("GPU attestation rejected"), error
    for name in named:
        assert name in error, (name, error)
    assert node.driver_of(bdf) != "vfio-pci" or bdf == ON_VFIO, "a rejected GPU stays with the host"
    assert cdi_spec(node, claim[2]) is None
    entry = device_status(node, claim, device_of(bdf))
    cond = condition(entry)
    assert (cond["status"], cond["reason"]) == ("False", "EvidenceRejected")
    assert entry["data"]["attestation"]["ok"] is False
    assert not [c for c in entry["conditions"] if c["type"] == "Ready"]
    node.wait_for(lambda: events_for(node, claim))
    (event,) = events_for(node, claim)
    assert (event["type"], event["reason"]) == ("Warning", "GpuAttestationRejected")


def test_accepted_claim_carries_a_verifiable_token(dgx: Node) -> None:
    claim, error = _prepare(dgx, GOOD, required=True)
    assert error == ""
    assert dgx.driver_of(GOOD) == "vfio-pci"
    spec = cdi_spec(dgx, claim[2])
    assert spec is not None
    validate_cdi(spec)
    assert spec["cdiVersion"] == "0.5.0"
    edits = spec["devices"][0]["containerEdits"]
    (env,) = edits["env"]
    name, _, token = env.partition("=")
    assert name == "CC_GPU_ATTESTATION_TOKEN_0000_18_00_0"
    assert "mounts" not in edits, "no token file by default: env reaches a confidential guest, a host file does not"
    assert (dgx.cdi_root / f"cc-gpu.io-vfio_{claim[2]}.json").stat().st_mode & 0o777 == 0o600
    assert_no_world_readable_file_holds(dgx.root, token)
    entry = device_status(dgx, claim, device_of(GOOD))
    assert condition(entry)["status"] == "True"
    assert condition(entry, "Ready")["status"] == "True"
    verdict = entry["data"]["attestation"]
    assert verdict["ok"] and verdict["policy"] == "class:strict"
    assert verdict["applied"]["revocation"] == "online" and verdict["applied"]["policies"] == ["class:strict"]
    assert verdict["gpus"][0]["evidenceSource"] == "simulated"
    assert len(json.dumps(entry["data"])) < 10 * 1024
    assert "eyJ" not in json.dumps(entry), "the token itself is not published on the claim"
    dgx.wait_for(lambda: events_for(dgx, claim))
    (event,) = events_for(dgx, claim)
    assert (event["type"], event["reason"]) == ("Normal", "GpuAttested")
    pod_uid = pod_uid_of(dgx, claim)
    ok = check_token(dgx, token, "--claim-uid", claim[2], "--pod-uid", pod_uid, "--node", NODE)
    assert ok.returncode == 0, ok.stderr
    assert f"bound to claim {claim[2]}, pod {pod_uid}, node {NODE}" in ok.stderr
    unbound = check_token(dgx, token)
    assert unbound.returncode == 0 and "NO binding checked" in unbound.stderr
    claims = json.loads(ok.stdout)
    assert claims["x-cc-gpu-claim-uid"] == claim[2] and claims["x-cc-gpu-pod-uids"] == [pod_uid]
    assert claims["x-cc-gpu-pci-address"] == GOOD and claims["x-cc-gpu-node"] == NODE
    assert claims["exp"] > claims["iat"] and len(claims["eat_nonce"]) == 64 and claims["ueid"]
    wrong_pod = check_token(dgx, token, "--claim-uid", claim[2], "--pod-uid", "not-this-pod")
    assert wrong_pod.returncode == 1 and "not issued for pod" in wrong_pod.stderr
    wrong_claim = check_token(dgx, token, "--claim-uid", "another-claim")
    assert wrong_claim.returncode == 1
    _release(dgx, claim)
    assert dgx.driver_of(GOOD) == "nvidia"
    assert not (dgx.plugin_dir / "tokens" / claim[2]).exists()


def test_tampered_evidence_is_rejected_and_nothing_changes(dgx: Node) -> None:
    claim, error = _prepare(dgx, TAMPERED, required=True)
    _assert_rejected(dgx, claim, error, TAMPERED, "measres", "mismatching indexes: [5]")
    checkpoint = json.loads((dgx.plugin_dir / "checkpoint.json").read_text())
    assert claim[2] not in json.loads(checkpoint["data"])["claims"]


@pytest.mark.parametrize(
    ("name", "section", "accepted", "named"),
    [
        ("strict policy fails on a missing RIM", {"policy": "strict"}, False, "x-nvidia-gpu-vbios-rim-fetched"),
        ("lenient policy reports a missing RIM", {"policy": "lenient"}, True, ""),
        ("inline policy: missing RIM reported", {"inlinePolicy": {"missingRim": "report"}}, True, ""),
        ("inline policy: missing RIM fails", {"inlinePolicy": {"missingRim": "fail"}}, False, "rim-fetched"),
    ],
)
def test_missing_rim_under_strict_and_lenient_policies(
    dgx: Node, name: str, section: dict[str, object], accepted: bool, named: str
) -> None:
    claim, error = _prepare(dgx, NO_VBIOS_RIM, required=True, **section)
    if accepted:
        assert error == "", name
        verdict = device_status(dgx, claim, device_of(NO_VBIOS_RIM))["data"]["attestation"]
        assert verdict["ok"]
        _release(dgx, claim)
    else:
        _assert_rejected(dgx, claim, error, NO_VBIOS_RIM, named)


@pytest.mark.parametrize(
    ("mode", "accepted"), [("online", False), ("cached", False), ("off", True)]
)
def test_revocation_modes(dgx: Node, mode: str, accepted: bool) -> None:
    claim, error = _prepare(dgx, REVOKED, required=True, revocation=mode)
    if accepted:
        assert error == ""
        verdict = device_status(dgx, claim, device_of(REVOKED))["data"]["attestation"]
        assert verdict["gpus"][0]["revocation"] == "off"
        _release(dgx, claim)
    else:
        _assert_rejected(dgx, claim, error, REVOKED, "x-nvidia-gpu-attestation-report-cert-chain", "revoked")


def test_inline_minimum_driver_version(dgx: Node) -> None:
    claim, error = _prepare(dgx, OLD_DRIVER, required=True, inlinePolicy={"minDriverVersion": "560.0"})
    _assert_rejected(dgx, claim, error, OLD_DRIVER, "x-nvidia-gpu-driver-version", "below the minimum 560.0")


def test_plain_claim_is_not_attested(dgx: Node) -> None:
    claim, error = _prepare(dgx, PLAIN)
    assert error == ""
    spec = cdi_spec(dgx, claim[2])
    assert spec is not None and "env" not in spec["devices"][0]["containerEdits"]
    entry = device_status(dgx, claim, device_of(PLAIN))
    assert [c["type"] for c in entry["conditions"]] == ["Ready"]
    _release(dgx, claim)


def test_discovery_publishes_attestation_attributes(dgx: Node) -> None:
    (s,) = dgx.api.list_resource_slices(DRIVER, NODE)
    attrs = {d["name"]: d["attributes"] for d in s["spec"]["devices"]}
    assert attrs[device_of(GOOD)]["attested"] == {"bool": True}
    assert attrs[device_of(GOOD)]["driverVersion"] == {"version": "550.90.7"}
    assert attrs[device_of(GOOD)]["vbiosVersion"] == {"string": "96.00.9F.00.01"}
    assert attrs[device_of(TAMPERED)]["attested"] == {"bool": False}
    assert attrs[device_of(REVOKED)]["attested"] == {"bool": False}


def test_keys_are_published_per_node(dgx: Node) -> None:
    cm = dgx.api.get_config_map("cc-gpu-token-keys", f"cc-gpu-token-keys-{NODE}")
    assert cm["metadata"]["annotations"]["cc-gpu.io/node"] == NODE
    assert list(cm["data"]) == [f"{NODE}.k1.pem"]
    key_file = dgx.plugin_dir / "token-keys" / "1.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (dgx.plugin_dir / "token-keys").stat().st_mode & 0o777 == 0o700


def test_gpu_already_on_vfio(dgx: Node) -> None:
    """Discovery evidence (the default) while young enough; refusal when stale, when the policy says so, and a
    temporary rebind refused on an NVSwitch system."""
    move_to_vfio(dgx, ON_VFIO)
    claim, error = _prepare(dgx, ON_VFIO, required=True, whenBoundToVfio="refuse")
    _assert_rejected(dgx, claim, error, ON_VFIO, "bound to vfio-pci", "refuses older evidence")
    claim, error = _prepare(dgx, ON_VFIO, required=True, whenBoundToVfio="rebind")
    _assert_rejected(dgx, claim, error, ON_VFIO, "NVLink/NVSwitch")
    claim, error = _prepare(dgx, ON_VFIO, required=True)
    assert error == ""
    verdict = device_status(dgx, claim, device_of(ON_VFIO))["data"]["attestation"]
    assert verdict["gpus"][0]["evidenceSource"] == "discovery" and verdict["gpus"][0]["nonce"] == "not ours"
    assert "nonce not ours" in condition(device_status(dgx, claim, device_of(ON_VFIO)))["message"]
    _release(dgx, claim)
    assert dgx.driver_of(ON_VFIO) == "vfio-pci", "given back to the driver it had"
    time.sleep(1.2)
    claim, error = _prepare(dgx, ON_VFIO, required=True, maxEvidenceAgeSeconds=1)
    _assert_rejected(dgx, claim, error, ON_VFIO, "x-cc-gpu-evidence-age", "policy allows 1 s")


def test_claim_cannot_switch_off_what_the_class_requires(dgx: Node) -> None:
    config = [attest_config(required=True), attest_config("FromClaim", required=False)]
    claim = dgx.vm_pod_claim([device_of(SPARE)], config=config)
    error = dgx.kubelet.prepare(DRIVER, [claim])[claim[2]].error
    assert "attestation.required" in error and "cannot be lowered" in error
    assert dgx.driver_of(SPARE) == "nvidia"


def test_temporary_rebind_without_nvswitch(tmp_path: Path) -> None:
    gpu = "0000:41:00.0"
    settings = "allow_rebind = true\n[policy]\nrequire_cc_mode = false\n"
    with attested_node(tmp_path, "h100-pcie-audio", settings=settings) as node:
        node.start_plugin()
        move_to_vfio(node, gpu)
        claim, error = _prepare(node, gpu, required=True)
        assert "nonce not ours" in error and "allow_foreign_nonce" in error, "discovery evidence is off by default"
        claim, error = _prepare(node, gpu, required=True, whenBoundToVfio="rebind")
        assert error == ""
        verdict = device_status(node, claim, device_of(gpu))["data"]["attestation"]
        assert verdict["gpus"][0]["evidenceSource"] == "simulated+rebind"
        assert node.driver_of(gpu) == "vfio-pci"
        _release(node, claim)
        assert node.driver_of(gpu) == "vfio-pci"


def test_advisory_attestation_records_but_never_blocks(dgx: Node) -> None:
    claim, error = _prepare(dgx, TAMPERED, required=False)
    assert error == ""
    assert dgx.driver_of(TAMPERED) == "vfio-pci"
    entry = device_status(dgx, claim, device_of(TAMPERED))
    assert condition(entry)["status"] == "False" and condition(entry, "Ready")["status"] == "True"
    spec = cdi_spec(dgx, claim[2])
    assert spec is not None and "env" not in spec["devices"][0]["containerEdits"], "no token for a failed verdict"
    _release(dgx, claim)


@pytest.mark.parametrize(
    ("name", "claim_section", "knob"),
    [
        ("revocation off", {"revocation": "off"}, "attestation.revocation"),
        ("a week of evidence age", {"maxEvidenceAgeSeconds": 604800}, "attestation.maxEvidenceAgeSeconds"),
        ("a named policy the node does not allow claims to add", {"policy": "lenient"}, "attestation.policy"),
    ],
)
def test_claim_cannot_weaken_the_class_policy(dgx: Node, name: str, claim_section: dict[str, object],
                                              knob: str) -> None:
    config = [attest_config(required=True), attest_config("FromClaim", **claim_section)]
    claim = dgx.vm_pod_claim([device_of(REVOKED)], config=config)
    error = dgx.kubelet.prepare(DRIVER, [claim])[claim[2]].error
    assert knob in error, (name, error)
    assert dgx.driver_of(REVOKED) == "nvidia" and cdi_spec(dgx, claim[2]) is None


def test_a_gpu_in_debug_mode_is_not_attested_as_production(dgx: Node) -> None:
    """With the gate's CC-mode check off (this node), a GPU in CC devtools mode still fails a strict attested claim:
    its firmware measures the debug configuration, so its measurements do not match the reference values."""
    dgx.kernel.set_cc_mode(SPARE, "devtools")
    try:
        claim, error = _prepare(dgx, SPARE, required=True)
        _assert_rejected(dgx, claim, error, SPARE, "measres", "mismatching indexes: [1]")
    finally:
        dgx.kernel.set_cc_mode(SPARE, "off")
