"""Helpers for the guest attestation tests: TLS material, the token key, the service (in process or as processes of
`cc-gpu attest serve`), the simulated guest (in process or `cc-gpu attest collect`)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cc_gpu.attest.guest import GuestEvidence
from cc_gpu.attest.token import TokenSigner
from cc_gpu.dra.attestcfg import AttestationSettings
from cc_gpu.dra.attestsetup import build_verifier
from cc_gpu.dra.guestservice import GuestVerificationService, RateLimiter
from cc_gpu.dra.simguest import SimulatedGuestNvml
from cc_gpu.host.guestnvml import GuestNvmlReader
from cc_gpu.kube.api import KubeApi
from tests.dra.harness import DRIVER, REPO, Node

KID = "service.1"


def guest_config(**extra: Any) -> list[dict[str, Any]]:
    """The allocation config the guest-attested DeviceClass gives: attestation required, evidence from the guest."""
    return [{"source": "FromClass", "opaque": {"driver": DRIVER, "parameters": {
        "apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig",
        "attestation": {"required": True, "evidence": "guest", **extra}}}}]


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    token_key: Path
    token_public: ec.EllipticCurvePublicKey


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_pki(root: Path) -> Pki:
    """A CA, the service's certificate for 127.0.0.1/localhost, and the token signing key (P-384)."""
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test service CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
          .not_valid_after(now + timedelta(days=1)).add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                                                  critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svc")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    token_key = ec.generate_private_key(ec.SECP384R1())
    paths = Pki(root / "ca.pem", root / "tls.pem", root / "tls.key", root / "token.key", token_key.public_key())
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(_pem_key(key))
    paths.token_key.write_bytes(_pem_key(token_key))
    return paths


def guest_settings(pki: Pki, url: str = "https://127.0.0.1:1") -> str:
    """The plugin's `[attestation]` lines that point claims at the service."""
    return f'service_url = "{url}"\nservice_ca = "{pki.ca}"\nchallenge_ttl_seconds = 600\n'


def in_process_service(node: Node, kube: KubeApi, *, clock: Any = None, replica: str = "r1",
                       settings: AttestationSettings | None = None) -> GuestVerificationService:
    """The service's core on the node's simulated CA, the API-server double behind `kube`."""
    guest = SimulatedGuestNvml.verifier_side(node.sim_root)
    a = settings or AttestationSettings()
    verifier = build_verifier(a, guest.ca.trust_store(), guest.ca.ocsp_responder(), simulated=True)
    signer = TokenSigner(ec.generate_private_key(ec.SECP384R1()), KID)
    return GuestVerificationService(kube, verifier, signer, a, DRIVER, clock=clock, collateral=guest.rims,
                                    limiter=RateLimiter(1000, 1000), replica=replica)


def guest_evidence(node: Node, gpus: Sequence[str], nonce: bytes) -> list[GuestEvidence]:
    """What `cc-gpu attest collect` gathers inside the VM, from the simulated guest NVML."""
    raw = GuestNvmlReader(SimulatedGuestNvml.of_node(node.sim_root, gpus)).collect_all(nonce)
    return [GuestEvidence(e.report, e.cert_chain_pem, e.arch) for e in raw]


def cdi_env(node: Node | Path, claim_uid: str) -> dict[str, str]:
    """The environment the claim's CDI spec gives the container (`node`: a Node, or a CDI root)."""
    root = node if isinstance(node, Path) else node.cdi_root
    spec = json.loads((root / f"cc-gpu.io-vfio_{claim_uid}.json").read_text())
    env: dict[str, str] = {}
    for device in spec["devices"]:
        for item in device["containerEdits"].get("env") or []:
            name, _, value = item.partition("=")
            env[name] = value
    return env


@contextlib.contextmanager
def service_process(node: Node, pki: Pki, *extra: str, name: str = "svc"
                    ) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`cc-gpu attest serve` on a free port; yields the process and its URL."""
    log = (node.root / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cc_gpu", "attest", "serve", "--listen", "127.0.0.1:0", "--tls-cert", str(pki.cert),
         "--tls-key", str(pki.key), "--token-key", str(pki.token_key), "--token-kid", KID, "--kubeconfig",
         str(node.root / "kubeconfig"), "--driver", DRIVER, "--simulated-node", str(node.sim_root),
         "--replica", name, *extra],
        stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("service did not start:\n" + (node.root / f"{name}.log").read_text()[-3000:])
        yield proc, json.loads(line)["listening"]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


def collect(env: dict[str, str], node: Node, gpus: Sequence[str], token_out: Path,
            *extra: str) -> subprocess.CompletedProcess[str]:
    """`cc-gpu attest collect` as the container in the VM runs it, with the env the CDI spec gave it."""
    return subprocess.run(
        [sys.executable, "-m", "cc_gpu", "attest", "collect", "--token-out", str(token_out), "--simulated-node",
         str(node.sim_root), "--simulated-gpus", ",".join(gpus), *extra],
        env={**os.environ, **env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120, check=False)


def race(services: Sequence[Any], nonce: bytes, evidence: Sequence[Any]) -> list[Any]:
    """Every service submits the same evidence at once (a barrier lines them up); their results."""
    results: list[Any] = []
    barrier = threading.Barrier(len(services))

    def submit(service: Any) -> None:
        barrier.wait()
        results.append(service.verify_submission(nonce, evidence, client="c"))

    threads = [threading.Thread(target=submit, args=(s,)) for s in services]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
