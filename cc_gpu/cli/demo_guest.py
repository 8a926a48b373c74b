"""The demo's guest-attested claim: a GPU in CC mode `on`, attested from inside the (simulated) confidential VM.

The story the README tells for production: the host cannot attest a GPU in CC mode, so at prepare the plugin mints a
challenge; the workload inside the VM runs `cc-gpu attest collect`, which sends the GPU's evidence to the
verification service (`cc-gpu attest serve`, here in process over HTTPS on localhost); the service verifies it under
the claim's policy, consumes the challenge on the claim and records `Attested=True` with `evidence: guest`; a replay
of the same challenge is refused.
"""

# ruff: noqa: PLC0415 - imports inside the functions: see cc_gpu.cli (lazy, light startup)

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

GUEST_CLASS_CONFIG = {"required": True, "evidence": "guest"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pki(root: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and the service's certificate for 127.0.0.1 (the demo's; a cluster uses its own PKI)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cc-gpu demo CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
          .not_valid_after(now + timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svc")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False).sign(ca_key, hashes.SHA256()))
    paths = root / "ca.pem", root / "tls.pem", root / "tls.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(paths[2], 0o600)
    return paths


def plugin_settings(root: Path, port: int) -> str:
    """The `[attestation]` lines of the demo node's plugin: where the service is and the CA of its certificate."""
    ca, _, _ = _pki(root / "guest-pki")
    return f'[attestation]\nservice_url = "https://127.0.0.1:{port}"\nservice_ca = "{ca}"\n'


def guest_attested_claim(demo: Any, device: str, port: int, say: Any) -> tuple[str, str, str]:
    """Prepare a guest-attested claim on `device`, attest it from the simulated guest, show the record and a replay."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from cc_gpu.attest.guest import SUBMIT_PATH
    from cc_gpu.attest.token import TokenSigner, TokenVerifier
    from cc_gpu.dra.attestcfg import AttestationSettings
    from cc_gpu.dra.attestsetup import build_verifier
    from cc_gpu.dra.guestservice import GuestVerificationService
    from cc_gpu.dra.serviceserver import ServiceServer, submission_handler
    from cc_gpu.dra.simguest import SimulatedGuestNvml

    say("Guest attestation: a GPU in CC mode on, attested from inside the confidential VM")
    driver = demo.driver_name
    config = [{"source": "FromClass", "opaque": {"driver": driver, "parameters": {
        "apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig", "attestation": GUEST_CLASS_CONFIG}}}]
    claim: tuple[str, str, str] = demo.claim_for(demo.snp, device, config)
    result = demo.kubelet.prepare(driver, [claim])[claim[2]]
    print(f"prepared {device} (error: {result.error or 'none'}), now on {demo.driver_of(device)}")
    entry = demo.api.get_resource_claim(claim[0], claim[1])["status"]["devices"][0]
    cond = next(c for c in entry["conditions"] if c["type"] == "Attested")
    record = entry["data"]["attestation"]["challenge"]
    print(f"claim condition Attested={cond['status']} ({cond['reason']}); challenge sha256 {record['sha256'][:16]}..."
          f" state {record['state']}, expires {record['expiresAt']}")
    spec = json.loads((demo.root / "cdi" / f"cc-gpu.io-vfio_{claim[2]}.json").read_text())
    env = dict(e.split("=", 1) for e in spec["devices"][0]["containerEdits"]["env"])
    print(f"CDI env for the VM: {', '.join(sorted(env))} (spec mode 0600: the challenge is a capability)")

    cert, key = demo.root / "guest-pki" / "tls.pem", demo.root / "guest-pki" / "tls.key"
    sim_root = demo.root / "sim"
    guest = SimulatedGuestNvml.verifier_side(sim_root)
    a = AttestationSettings()
    signing_key = ec.generate_private_key(ec.SECP384R1())
    service = GuestVerificationService(demo.api, build_verifier(a, guest.ca.trust_store(), guest.ca.ocsp_responder(),
                                                                simulated=True),
                                       TokenSigner(signing_key, "service.demo"), a, driver, collateral=guest.rims)
    server = ServiceServer(("127.0.0.1", port), cert, key)
    server.add_route("POST", SUBMIT_PATH, submission_handler(service))
    server.start()
    try:
        bdf = demo.bdf(device)
        token_file = demo.root / "guest-token.jwt"
        run = [sys.executable, "-m", "cc_gpu", "attest", "collect", "--token-out", str(token_file), "--json",
               "--simulated-node", str(sim_root), "--simulated-gpus", bdf]
        child_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(run, env=child_env, capture_output=True, text=True, timeout=120, check=False)
        answer = json.loads(done.stdout.splitlines()[0]) if done.stdout else {}
        print(f"in the VM: cc-gpu attest collect -> exit {done.returncode}, accepted={answer.get('accepted')}, "
              f"claim {answer.get('claim')}; token written to a 0600 file ({token_file.stat().st_size} bytes)")
        entry = demo.api.get_resource_claim(claim[0], claim[1])["status"]["devices"][0]
        cond = next(c for c in entry["conditions"] if c["type"] == "Attested")
        data = entry["data"]["attestation"]
        print(f"claim condition Attested={cond['status']} ({cond['reason']}), evidence: {data['evidence']}, "
              f"challenge {data['challenge']['state']}, identity: {data['gpus'][0]['identity']}")
        print(f"other conditions kept: {sorted(c['type'] for c in entry['conditions'] if c['type'] != 'Attested')}")
        claims = TokenVerifier({"service.demo": signing_key.public_key()}).verify(
            token_file.read_text().strip(), datetime.now(UTC), nonce=env["CC_GPU_ATTESTATION_CHALLENGE"])
        print(f"token verified: evidence {claims['x-cc-gpu-evidence']}, claim {claims['x-cc-gpu-claim']}, "
              f"measres={claims['measres']}")
        again = subprocess.run(run, env=child_env, capture_output=True, text=True, timeout=120, check=False)
        replay = json.loads(again.stdout.splitlines()[0]) if again.stdout else {}
        print(f"replay of the same challenge: exit {again.returncode}, refused: {replay.get('failedChecks')}")
    finally:
        server.stop()
    return claim
