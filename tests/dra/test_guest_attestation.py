"""The guest attestation path end to end on the simulated node: plugin (a real process) + service + simulated guest.

GPUs in CC mode `on` serve only their guest: the plugin mints a challenge at prepare (checkpoint, CDI env, its hash on
the claim), the simulated guest collects evidence for it, the service verifies it under the claim's policy, checks
the challenge and the GPU's identity, and records the verdict on the claim (`Attested`, `evidence: guest`), merged
with the plugin's conditions. Each refusal is recorded with its reason; a crash between challenge and submission
leaves nothing recorded wrongly and a retry works; two replicas never both accept one challenge.
"""

from __future__ import annotations

import contextlib
import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from cc_gpu.attest.token import TokenVerifier
from cc_gpu.dra.challenge import ENV_CHALLENGE, ENV_CLAIM_NAME, ENV_CLAIM_UID, ENV_DEVICES, ENV_SERVICE_CA, digest
from cc_gpu.dra.guestservice import EXPIRED, GPU_COUNT, IDENTITY, REUSED, UNAVAILABLE, UNKNOWN, WRONG_NODE
from cc_gpu.kube.client import KubernetesApi
from cc_gpu.kube.errors import ApiUnavailableError
from tests.dra.attested import attested_node, condition, device_of, device_status, events_for
from tests.dra.guest import (
    KID,
    Pki,
    cdi_env,
    collect,
    guest_config,
    guest_evidence,
    guest_settings,
    in_process_service,
    make_pki,
    race,
    service_process,
)
from tests.dra.harness import DRIVER, NODE, Node

KNOWN, OTHER, TAMPERED, SPARE, FRESH = "0000:18:00.0", "0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0", "0000:9a:00.0"
FAULTS = {TAMPERED: {"tamper_measurement": 5}}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Node]:
    """A DGX node whose GPUs are in CC mode `on`, except KNOWN and OTHER, which start in `off` so that discovery
    records their identities (a pre-flight) before the admin switches CC on."""
    with attested_node(tmp_path_factory.mktemp("guest"), faults=FAULTS, settings=guest_settings(pki),
                       cc_mode="on") as n:
        for bdf in (KNOWN, OTHER):
            n.kernel.set_cc_mode(bdf, "off")
        n.start_plugin()
        for bdf in (KNOWN, OTHER):
            n.kernel.set_cc_mode(bdf, "on")
        yield n


@pytest.fixture()
def kube(node: Node) -> Iterator[KubernetesApi]:
    api = KubernetesApi(node.root / "kubeconfig")
    yield api
    api.close()


def _prepare(node: Node, bdf: str) -> tuple[tuple[str, str, str], dict[str, str]]:
    claim = node.vm_pod_claim([device_of(bdf)], config=guest_config())
    result = node.kubelet.prepare(DRIVER, [claim])[claim[2]]
    assert result.error == "", result.error
    return claim, cdi_env(node, claim[2])


def _release(node: Node, claim: tuple[str, str, str]) -> None:
    assert node.kubelet.unprepare(DRIVER, [claim]) == {claim[2]: ""}


def _attested(node: Node, claim: tuple[str, str, str], bdf: str) -> tuple[dict[str, Any], dict[str, Any]]:
    entry = device_status(node, claim, device_of(bdf))
    return condition(entry), entry["data"]["attestation"]


def test_prepare_mints_a_challenge(node: Node) -> None:
    claim, env = _prepare(node, KNOWN)
    nonce = bytes.fromhex(env[ENV_CHALLENGE])
    assert (env[ENV_CLAIM_NAME], env[ENV_CLAIM_UID], env[ENV_DEVICES]) == (claim[1], claim[2], device_of(KNOWN))
    assert env[ENV_SERVICE_CA].startswith("-----BEGIN CERTIFICATE-----")
    spec = node.cdi_root / f"cc-gpu.io-vfio_{claim[2]}.json"
    assert stat.S_IMODE(spec.stat().st_mode) == 0o600, "the challenge is a capability: the spec is not world-readable"
    cond, data = _attested(node, claim, KNOWN)
    assert (cond["status"], cond["reason"]) == ("Unknown", "AwaitingGuestEvidence")
    record = data["challenge"]
    assert record["sha256"] == digest(nonce) and record["state"] == "open" and record["node"] == NODE
    assert (data["ok"], data["state"], data["evidence"]) == (None, "awaiting guest evidence", "guest")
    assert env[ENV_CHALLENGE] not in json.dumps(data), "the claim carries the hash, never the challenge"
    (gpu,) = record["gpus"]
    assert gpu["bdf"] == KNOWN and gpu["ueid"] and gpu["identity"].startswith("recorded (simulated at discovery")
    checkpoint = json.loads(json.loads((node.plugin_dir / "checkpoint.json").read_text())["data"])
    assert checkpoint["claims"][claim[2]]["challenge"]["nonce"] == env[ENV_CHALLENGE]
    assert node.driver_of(KNOWN) == "vfio-pci", "the GPU went to the VM: its verdict comes from the guest"
    _release(node, claim)


def test_accepted_then_reused(node: Node, kube: KubernetesApi) -> None:
    claim, env = _prepare(node, KNOWN)
    nonce = bytes.fromhex(env[ENV_CHALLENGE])
    service = in_process_service(node, kube)
    result = service.verify_submission(nonce, guest_evidence(node, [KNOWN], nonce), client="10.0.0.9")
    assert result.accepted and result.failed_checks == () and result.claim == f"{claim[0]}/{claim[1]}"
    assert result.token is not None
    claims = TokenVerifier({KID: service.signer.key.public_key()}).verify(result.token, datetime.now(UTC),
                                                                          nonce=nonce.hex())
    assert claims["x-cc-gpu-evidence"] == "guest" and claims["x-cc-gpu-claim-uid"] == claim[2]
    entry = device_status(node, claim, device_of(KNOWN))
    cond, data = condition(entry), entry["data"]["attestation"]
    assert (cond["status"], cond["reason"]) == ("True", "GuestEvidenceVerified")
    assert data["evidence"] == "guest" and data["ok"] is True and data["challenge"]["state"] == "consumed"
    assert data["state"] == "verified"
    assert data["gpus"][0]["identity"].startswith("recorded")
    assert condition(entry, "Ready")["status"] == "True", "the plugin's condition stays"
    # The same challenge again (a replay, or the guest retrying after success): refused, the verdict stands.
    again = service.verify_submission(nonce, guest_evidence(node, [KNOWN], nonce), client="10.0.0.9")
    assert (again.accepted, again.failed_checks, again.token) == (False, (REUSED,), None)
    assert condition(device_status(node, claim, device_of(KNOWN)))["status"] == "True"
    node.wait_for(lambda: any(e["reason"] == "GpuAttestationChallengeReused" for e in events_for(node, claim)))
    _release(node, claim)


def test_one_challenge_for_every_gpu_of_a_claim(node: Node, kube: KubernetesApi) -> None:
    """Two GPUs in one claim (as a protected-PCIe VM gets them): one challenge, evidence of both in any order."""
    pair = ["0000:ab:00.0", "0000:ba:00.0"]
    claim = node.vm_pod_claim([device_of(b) for b in pair], config=guest_config())
    assert node.kubelet.prepare(DRIVER, [claim])[claim[2]].error == ""
    env = cdi_env(node, claim[2])
    assert env[ENV_DEVICES].split(",") == [device_of(b) for b in pair]
    nonce = bytes.fromhex(env[ENV_CHALLENGE])
    records = {b: _attested(node, claim, b)[1]["challenge"]["sha256"] for b in pair}
    assert set(records.values()) == {digest(nonce)}
    result = in_process_service(node, kube).verify_submission(nonce, guest_evidence(node, pair[::-1], nonce),
                                                              client="c")
    assert result.accepted and len(result.per_gpu) == 2, result.failed_checks
    for bdf in pair:
        cond, data = _attested(node, claim, bdf)
        assert cond["status"] == "True" and data["gpus"][0]["bdf"] == bdf
        # Neither had a recorded identity: which PCI device gave which evidence is not known, so none is tied to one.
        assert data["gpus"][0]["ueid"] is None and data["gpus"][0]["identity"].startswith("trust on first use, "
                                                                                          "unassigned")
    _release(node, claim)
    again = node.vm_pod_claim([device_of(pair[0])], config=guest_config())
    assert node.kubelet.prepare(DRIVER, [again])[again[2]].error == ""
    assert _attested(node, again, pair[0])[1]["challenge"]["gpus"][0]["ueid"] is None, "nothing was learned"
    _release(node, again)


def _mutations(node: Node) -> dict[str, Any]:
    return {
        "tampered evidence": (TAMPERED, lambda nonce: guest_evidence(node, [TAMPERED], nonce), "measres"),
        "evidence for another nonce": (SPARE, lambda nonce: guest_evidence(node, [SPARE], bytes(32)), "x-nvidia-gpu-"
                                       "attestation-report-nonce-match"),
        "evidence of another GPU": (KNOWN, lambda nonce: guest_evidence(node, [OTHER], nonce), IDENTITY),
        "evidence of two GPUs for one": (SPARE, lambda nonce: guest_evidence(node, [SPARE, OTHER], nonce), GPU_COUNT),
    }


@pytest.mark.parametrize("case", ["tampered evidence", "evidence for another nonce", "evidence of another GPU",
                                  "evidence of two GPUs for one"])
def test_rejections_are_recorded_on_the_claim(node: Node, kube: KubernetesApi, case: str) -> None:
    bdf, evidence_for, reason = _mutations(node)[case]
    claim, env = _prepare(node, bdf)
    nonce = bytes.fromhex(env[ENV_CHALLENGE])
    result = in_process_service(node, kube).verify_submission(nonce, evidence_for(nonce), client="c")
    assert not result.accepted and result.token is None
    assert any(reason in f for f in result.failed_checks), result.failed_checks
    cond, data = _attested(node, claim, bdf)
    assert (cond["status"], cond["reason"]) == ("False", "GuestEvidenceRejected")
    assert reason in cond["message"] and data["ok"] is False and data["evidence"] == "guest"
    assert any(reason in f for f in data["failed"])
    assert data["challenge"]["state"] == "consumed", "a challenge is single use, also when its evidence fails"
    node.wait_for(lambda: any(e["reason"] == "GpuAttestationRejected" and e["type"] == "Warning"
                              for e in events_for(node, claim)))
    _release(node, claim)


def test_expired_challenge(node: Node, kube: KubernetesApi) -> None:
    claim, env = _prepare(node, SPARE)
    nonce = bytes.fromhex(env[ENV_CHALLENGE])
    later = datetime.now(UTC) + timedelta(seconds=601)
    result = in_process_service(node, kube, clock=lambda: later).verify_submission(
        nonce, guest_evidence(node, [SPARE], nonce), client="c")
    assert result.failed_checks == (EXPIRED,)
    cond, _ = _attested(node, claim, SPARE)
    assert cond["status"] == "False" and EXPIRED in cond["message"]
    _release(node, claim)


def test_claim_of_another_node(node: Node, kube: KubernetesApi) -> None:
    """A challenge record in a claim allocated to another node (a plugin writing where it has no business)."""
    claim, env = _prepare(node, SPARE)
    nonce = bytes.fromhex(env[ENV_CHALLENGE])
    record = device_status(node, claim, device_of(SPARE))
    pod = node.pod("vm-elsewhere")
    stored = node.server.create({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "claim-elsewhere", "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": "gpu0", "exactly": {"deviceClassName": "vfio-gpu"}}]}}})
    stored["status"] = {
        "allocation": {"devices": {"results": [{"request": "gpu0", "driver": DRIVER, "pool": "node-b",
                                                "device": device_of(SPARE)}], "config": guest_config()},
                       "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                           {"key": "metadata.name", "operator": "In", "values": ["node-b"]}]}]}},
        "reservedFor": [{"resource": "pods", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}],
        "devices": [{**record, "pool": "node-b"}],
    }
    node.server.store.replace(node.server.store_type("resourceclaims"), "default", "claim-elsewhere", stored,
                              subresource="status")
    other = ("default", "claim-elsewhere", stored["metadata"]["uid"])
    _release(node, claim)  # the real claim is gone from this node: its record is no longer there
    node.delete_claim(claim[0], claim[1])
    result = in_process_service(node, kube).verify_submission(nonce, guest_evidence(node, [SPARE], nonce), client="c")
    assert result.failed_checks == (WRONG_NODE,) and result.claim == f"{other[0]}/{other[1]}"
    entry = device_status(node, other, device_of(SPARE))
    assert condition(entry)["status"] == "False" and WRONG_NODE in condition(entry)["message"]


def test_unknown_challenge_touches_nothing(node: Node, kube: KubernetesApi) -> None:
    before = node.api.get_resource_claim  # nothing to compare: no claim carries this challenge
    assert before is not None
    result = in_process_service(node, kube).verify_submission(bytes(range(32)), guest_evidence(node, [SPARE],
                                                                                               bytes(range(32))),
                                                              client="c")
    assert (result.accepted, result.failed_checks, result.claim) == (False, (UNKNOWN,), None)


def test_identity_taken_on_first_use_is_recorded_for_that_pci_device(node: Node, kube: KubernetesApi) -> None:
    """A GPU in CC mode `on` since discovery has no recorded identity: its first guest verdict takes it on first use
    (and says so); the node records it at unprepare, so the next challenge names it and another GPU's evidence fails."""
    claim, env = _prepare(node, FRESH)
    record = _attested(node, claim, FRESH)[1]["challenge"]
    (gpu,) = record["gpus"]
    assert gpu["ueid"] is None and gpu["identity"] == "unknown: trust on first use"
    nonce = bytes.fromhex(env[ENV_CHALLENGE])
    # Evidence of a GPU the node knows at another address is never taken on first use.
    known = in_process_service(node, kube)
    assert len(record["knownElsewhere"]) == 2  # KNOWN and OTHER, recorded at discovery
    stolen = known.verify_submission(nonce, guest_evidence(node, [KNOWN], nonce), client="c")
    assert not stolen.accepted and IDENTITY in stolen.failed_checks
    assert "belongs to another GPU of this node" in _attested(node, claim, FRESH)[0]["message"]
    _release(node, claim)
    claim, env = _prepare(node, FRESH)
    nonce = bytes.fromhex(env[ENV_CHALLENGE])
    first = in_process_service(node, kube).verify_submission(nonce, guest_evidence(node, [FRESH], nonce), client="c")
    assert first.accepted
    cond, data = _attested(node, claim, FRESH)
    assert "trust on first use" in cond["message"] and data["gpus"][0]["identity"].startswith("trust on first use")
    _release(node, claim)
    claim, env = _prepare(node, FRESH)
    (gpu,) = _attested(node, claim, FRESH)[1]["challenge"]["gpus"]
    assert gpu["ueid"] == data["gpus"][0]["ueid"]
    assert gpu["identity"].startswith("recorded (guest attestation, trust on first use")
    nonce = bytes.fromhex(env[ENV_CHALLENGE])
    other = in_process_service(node, kube).verify_submission(nonce, guest_evidence(node, [SPARE], nonce), client="c")
    assert not other.accepted and IDENTITY in other.failed_checks
    _release(node, claim)


@pytest.mark.parametrize("point", ["prepare-after-started", "prepare-after-cdi", "prepare-after-completed"])
def test_plugin_crash_between_challenge_and_submission(node: Node, kube: KubernetesApi, point: str) -> None:
    """The plugin dies after minting a challenge: before completion the prepare is rolled back and the retry mints a
    new one; after completion the retry records the checkpoint's challenge (the crash came before the claim was
    written). Either way nothing is recorded wrongly before, and the guest's submission succeeds after."""
    node.stop_plugin()
    node.start_plugin(env={"CC_GPU_CRASH_AT": point})
    claim = node.vm_pod_claim([device_of(SPARE)], config=guest_config())
    with pytest.raises(grpc.RpcError):
        node.kubelet.prepare(DRIVER, [claim])
    assert node.proc is not None and node.proc.wait(timeout=10) == -9
    node.proc = None
    assert not (node.api.get_resource_claim(claim[0], claim[1]).get("status") or {}).get("devices")
    node.start_plugin()
    assert node.kubelet.prepare(DRIVER, [claim])[claim[2]].error == ""
    nonce = bytes.fromhex(cdi_env(node, claim[2])[ENV_CHALLENGE])
    cond, data = _attested(node, claim, SPARE)
    assert cond["status"] == "Unknown" and data["challenge"]["sha256"] == digest(nonce)
    result = in_process_service(node, kube).verify_submission(nonce, guest_evidence(node, [SPARE], nonce), client="c")
    assert result.accepted
    _release(node, claim)


class _FailingWrites:
    """The API server unreachable for the verdict's write (the service crashing before it)."""

    def __init__(self, real: KubernetesApi) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def json_patch_resource_claim_status(self, *args: Any) -> Any:
        raise ApiUnavailableError("connection refused")


def test_service_failing_before_its_write_records_nothing_and_a_retry_works(node: Node, kube: KubernetesApi) -> None:
    claim, env = _prepare(node, SPARE)
    nonce = bytes.fromhex(env[ENV_CHALLENGE])
    broken = in_process_service(node, _FailingWrites(kube))  # type: ignore[arg-type]
    first = broken.verify_submission(nonce, guest_evidence(node, [SPARE], nonce), client="c")
    assert (first.accepted, first.token, first.failed_checks) == (False, None, (UNAVAILABLE,))
    cond, data = _attested(node, claim, SPARE)
    assert cond["status"] == "Unknown" and data["challenge"]["state"] == "open", "nothing recorded"
    retry = in_process_service(node, kube).verify_submission(nonce, guest_evidence(node, [SPARE], nonce), client="c")
    assert retry.accepted
    _release(node, claim)


def test_two_replicas_never_both_accept_one_challenge(node: Node, kube: KubernetesApi) -> None:
    claim, env = _prepare(node, SPARE)
    nonce = bytes.fromhex(env[ENV_CHALLENGE])
    evidence = guest_evidence(node, [SPARE], nonce)
    replicas = [in_process_service(node, kube, replica=f"r{i}") for i in range(2)]
    results = race(replicas, nonce, evidence)
    assert sorted(r.accepted for r in results) == [False, True]
    assert [r.failed_checks for r in results if not r.accepted] == [(REUSED,)]
    _release(node, claim)


def test_processes_over_https_with_a_replica_restarted_and_the_plugin_restarted(node: Node, pki: Pki) -> None:
    """`cc-gpu attest serve` twice, one replica killed and restarted between challenge and submission, the plugin
    restarted too; `cc-gpu attest collect` with the env the CDI spec gave the container."""
    with contextlib.ExitStack() as stack:
        first, _ = stack.enter_context(service_process(node, pki, name="svc-a"))
        _, url_b = stack.enter_context(service_process(node, pki, name="svc-b"))
        claim, env = _prepare(node, SPARE)
        first.kill()  # crash of a replica between challenge and submission
        first.wait()
        node.stop_plugin()  # and of the plugin: the prepared claim and its challenge survive in the checkpoint
        node.start_plugin()
        _, url_c = stack.enter_context(service_process(node, pki, name="svc-c"))
        token_file = node.root / "token.jwt"
        done = collect(env, node, [SPARE], token_file, "--service-url", url_c, "--json")
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert token not in done.stdout + done.stderr
        for log in ("svc-a", "svc-b", "svc-c"):
            assert token not in (node.root / f"{log}.log").read_text(), "tokens are never logged"
        assert json.loads(done.stdout.splitlines()[0])["claim"] == f"{claim[0]}/{claim[1]}"
        cond, data = _attested(node, claim, SPARE)
        assert cond["status"] == "True" and data["challenge"]["consumedBy"] == "svc-c"
        # The other replica refuses the used challenge.
        again = collect(env, node, [SPARE], node.root / "token2.jwt", "--service-url", url_b, "--json")
        assert again.returncode == 1 and json.loads(again.stdout.splitlines()[0])["failedChecks"] == [REUSED]
        assert not (node.root / "token2.jwt").exists()
        _release(node, claim)


def test_collect_refuses_without_a_challenge(node: Node, tmp_path: Path) -> None:
    done = collect({}, node, [SPARE], tmp_path / "t", "--service-url", "https://127.0.0.1:1")
    assert done.returncode == 2 and "no challenge" in done.stderr
