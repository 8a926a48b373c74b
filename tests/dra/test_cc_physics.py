"""The simulator follows the hardware: a GPU in CC mode `on`/`ppcie` serves only its guest.

Its host driver no longer offers it to NVML (no UUID, no NVML CC readout: the mode comes from BAR0), and it gives
no attestation evidence to the host; `devtools` and `off` still answer the host, which is where host-side
attestation keeps its place as a pre-flight check. A claim that asks the host to attest a CC-mode GPU is refused
with a message naming the guest path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cc_gpu.attest.ocsp import RevocationChecker
from cc_gpu.attest.verifier import Verifier
from cc_gpu.dra.attestation import AttestationEngine, AttestationRejectedError
from cc_gpu.dra.attestcfg import AttestationRequest, AttestationSettings
from cc_gpu.dra.attestsetup import HostEvidenceOps
from cc_gpu.dra.evidence import SimulatedProvider
from cc_gpu.dra.keys import NodeKeyStore
from cc_gpu.host.discovery import discover
from cc_gpu.host.gpuevidence import EvidenceUnavailableError
from cc_gpu.host.sim import SimKernel, create_sim_host
from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.client import KubernetesApi

BDF = "0000:18:00.0"
NONCE = bytes(range(32))


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[tuple[Any, SimKernel]]:
    host = create_sim_host("dgx-h100", tmp_path / "sim")
    yield host, SimKernel(tmp_path / "sim")


@pytest.mark.parametrize(("mode", "nvml_answers"), [("on", False), ("ppcie", False), ("devtools", True),
                                                    ("off", True)])
def test_host_nvml_follows_the_cc_mode(node: tuple[Any, SimKernel], mode: str, nvml_answers: bool) -> None:
    host, kernel = node
    kernel.set_cc_mode(BDF, mode)
    assert (kernel.nvml_info(BDF) is not None) is nvml_answers
    (gpu,) = [g for g in discover(host).gpus if g.bdf == BDF]
    assert gpu.cc_mode == mode  # from NVML where it answers, else from BAR0, as the hardware allows
    assert (gpu.uuid is not None) is nvml_answers  # NVML's UUID is unknown once the GPU stopped serving the host


@pytest.mark.parametrize("mode", ["on", "ppcie"])
def test_simulated_provider_gives_no_host_evidence_in_cc_mode(node: tuple[Any, SimKernel], mode: str) -> None:
    host, kernel = node
    provider = SimulatedProvider(cc_mode_of=HostEvidenceOps(host).cc_mode_of)
    kernel.set_cc_mode(BDF, mode)
    with pytest.raises(EvidenceUnavailableError, match="inside the confidential VM"):
        provider.collect(BDF, NONCE)
    kernel.set_cc_mode(BDF, "off")
    assert provider.collect(BDF, NONCE).nonce == NONCE


def test_host_attestation_of_a_cc_mode_gpu_names_the_guest_path(node: tuple[Any, SimKernel], tmp_path: Path) -> None:
    host, kernel = node
    kernel.set_cc_mode(BDF, "on")
    provider = SimulatedProvider(cc_mode_of=HostEvidenceOps(host).cc_mode_of)
    verifier = Verifier(provider.trust_store(), revocation=RevocationChecker(transport=provider.ocsp_transport()))
    with ApiServerDouble() as server, contextlib.closing(
        KubernetesApi(server.write_kubeconfig(tmp_path / "kc"))
    ) as kube:
        engine = AttestationEngine(AttestationSettings(), provider, verifier,
                                   NodeKeyStore(tmp_path / "k", "node-a", timedelta(days=1)), HostEvidenceOps(host),
                                   kube, "gpu.cc-gpu.io", "node-a", tmp_path / "tokens")
        with pytest.raises(AttestationRejectedError, match=r"host cannot attest it; use the guest attestation path"):
            engine._evidence(BDF, engine.applied_for(AttestationRequest(required=True)))
        engine.close()
