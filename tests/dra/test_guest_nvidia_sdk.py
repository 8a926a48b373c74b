"""NVIDIA's attestation SDK (nv-attestation-sdk 2.7.3, remote mode, unchanged) as the guest's client of the real
`cc-gpu attest serve`, through its NVIDIA-compatible API, for a claim's challenge on the simulated node.

The plugin (a real process) mints the claim's challenge at prepare; the simulated guest's NVML gives the evidence for
it (as `get_evidence()` would inside the VM); the SDK posts it to `/v3/attest/gpu` of a `cc-gpu attest serve`
process, reads the detached EAT, checks its ES384 signatures with the key from `/.well-known/jwks.json` and applies
NVIDIA's remote GPU policy example (4.0) unchanged. The service records the verdict on the claim as for its own API.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cc_gpu.dra.challenge import ENV_CHALLENGE
from cc_gpu.dra.guestservice import REUSED
from tests.attest.nvsdk_front import NVIDIA_POLICY, run_sdk, service_eat
from tests.dra.attested import attested_node, condition, device_of, device_status
from tests.dra.guest import Pki, cdi_env, guest_config, guest_evidence, guest_settings, make_pki, service_process
from tests.dra.harness import DRIVER, Node
from tests.nvidia_vectors import nvidia_sdk_python

GOOD, TAMPERED, SPARE = "0000:5d:00.0", "0000:3a:00.0", "0000:9a:00.0"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Node]:
    with attested_node(tmp_path_factory.mktemp("guest-sdk"), faults={TAMPERED: {"tamper_measurement": 5}},
                       settings=guest_settings(pki), cc_mode="on") as n:
        n.start_plugin()
        yield n


@pytest.fixture(scope="module")
def service(node: Node, pki: Pki) -> Iterator[str]:
    with service_process(node, pki, name="svc-sdk") as (_, url):
        yield url


def _sdk_evidence(node: Node, bdf: str, nonce: bytes) -> list[dict[str, str]]:
    b64 = base64.b64encode
    return [{"evidence": b64(e.report).decode(), "certificate": b64(e.cert_chain_pem).decode(), "arch": e.arch}
            for e in guest_evidence(node, [bdf], nonce)]


def _claim(node: Node, bdf: str) -> tuple[tuple[str, str, str], bytes]:
    claim = node.vm_pod_claim([device_of(bdf)], config=guest_config())
    result = node.kubelet.prepare(DRIVER, [claim])[claim[2]]
    assert result.error == "", result.error
    return claim, bytes.fromhex(cdi_env(node, claim[2])[ENV_CHALLENGE])


def _sdk(node: Node, pki: Pki, url: str, tmp: Path, bdf: str, nonce: bytes) -> dict[str, Any]:
    return run_sdk(nvidia_sdk_python("2.7.3"), f"{url}/v3/attest/gpu", pki.ca, tmp, _sdk_evidence(node, bdf, nonce),
                   nonce, NVIDIA_POLICY)


def test_nvidias_sdk_attests_a_claims_gpu_through_attest_serve(node: Node, pki: Pki, service: str,
                                                                tmp_path: Path) -> None:
    claim, nonce = _claim(node, GOOD)
    result = _sdk(node, pki, service, tmp_path, GOOD, nonce)
    assert (result["attest"], result["validate"]) == (True, True)
    entry = device_status(node, claim, device_of(GOOD))
    assert condition(entry)["status"] == "True" and entry["data"]["attestation"]["evidence"] == "guest"
    assert entry["data"]["attestation"]["challenge"]["state"] == "consumed"
    # The same challenge again: refused before any verification (403), the verdict stands.
    again = _sdk(node, pki, service, tmp_path, GOOD, nonce)
    assert (again["attest"], again["validate"]) == (False, False)
    assert condition(device_status(node, claim, device_of(GOOD)))["status"] == "True"
    assert REUSED in (node.root / "svc-sdk.log").read_text()
    (_, overall), detached = service_eat(result["token"])
    log = (node.root / "svc-sdk.log").read_text()
    assert all(token not in log for token in (overall, *detached.values())), "tokens are never logged"
    assert node.kubelet.unprepare(DRIVER, [claim]) == {claim[2]: ""}


def test_tampered_evidence_fails_in_the_sdk_and_on_the_claim(node: Node, pki: Pki, service: str,
                                                             tmp_path: Path) -> None:
    claim, nonce = _claim(node, TAMPERED)
    result = _sdk(node, pki, service, tmp_path, TAMPERED, nonce)
    assert (result["attest"], result["validate"]) == (False, False)
    (_, overall), _ = service_eat(result["token"])
    assert overall  # a signed answer: the evidence was judged and rejected, not refused unheard
    entry = device_status(node, claim, device_of(TAMPERED))
    assert condition(entry)["status"] == "False" and "measres" in str(entry["data"]["attestation"])
    assert node.kubelet.unprepare(DRIVER, [claim]) == {claim[2]: ""}
