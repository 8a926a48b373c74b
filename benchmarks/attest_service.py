"""The verification service's NVIDIA-compatible API over HTTPS: verifications per second and latency, beside NVIDIA's
Python verifier timed in the same run.

    python benchmarks/attest_service.py [--requests 300] [--clients 4] [--nvidia-runs 30]

Each request is what NVIDIA's SDK sends in remote mode (`POST /v3/attest/gpu`, the 2.1.1 sample's report and chain,
base64) over TLS on 127.0.0.1, answered with signed ES384 tokens (one per GPU and an overall one). The figures:

  service    `cc-gpu attest serve`'s own HTTPS server (`ServiceServer`) and core (`GuestVerificationService`, no API
             server) with the NVIDIA-compatible routes, as the command wires them: the sample's nonce registered as an
             admin's interop challenge afresh for each submission, RIMs from an imported directory, the admin's
             policy with revocation off, the clock at 2025-01-15. Its server speaks HTTP/1.0, so every request pays a
             TLS handshake, as every guest and NVIDIA's SDK (a `requests` call per attestation) do anyway.
  stand-in   the tests' HTTPS server (keep-alive) and a core that only verifies: what the front itself costs.
  NVIDIA     its `attest()` per verification in-process (nvidia_harness.py, logging silenced, OCSP stubbed), which
             does less (no transport, no token of any strength).

Warm: the verifier's caches are filled by a first request. Clients (`http.client`, one per thread) run in the same
process, so their cost (and the handshake's client side) is counted too.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from attest_vs_nvidia import AT, NONCE, RIMS, SAMPLE_VERSION, nvidia, nvidia_python  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from cc_gpu.attest.evidence import decode_report_text, parse_report  # noqa: E402
from cc_gpu.attest.guest import GuestEvidence, SubmissionResult  # noqa: E402
from cc_gpu.attest.nvcompat import NvidiaTokens, register_nvidia_routes  # noqa: E402
from cc_gpu.attest.ocsp import RevocationMode  # noqa: E402
from cc_gpu.attest.policy import Policy  # noqa: E402
from cc_gpu.attest.sources import DirectoryRimSource, driver_rim_id, vbios_rim_id  # noqa: E402
from cc_gpu.attest.token import TokenSigner  # noqa: E402
from cc_gpu.attest.trust import TrustStore  # noqa: E402
from cc_gpu.attest.verifier import Verifier  # noqa: E402
from cc_gpu.dra.attestcfg import AttestationSettings  # noqa: E402
from cc_gpu.dra.guestservice import GuestVerificationService, RateLimiter  # noqa: E402
from cc_gpu.dra.serviceserver import ServiceServer  # noqa: E402
from tests.attest.nvsdk_front import InteropCore, RouteServer  # noqa: E402
from tests.cluster import pki  # noqa: E402
from tests.nvidia_vectors import nvidia_files  # noqa: E402


def request_body(sample_dir: Path) -> bytes:
    report = decode_report_text((sample_dir / "attestationReport.txt").read_bytes())
    chain = (sample_dir / "gpuAkCertChain.txt").read_bytes()
    return json.dumps(
        {
            "nonce": NONCE,
            "evidence_list": [
                {"evidence": base64.b64encode(report).decode(), "certificate": base64.b64encode(chain).decode()}
            ],
            "arch": "HOPPER",
            "claims_version": "3.0",
        }
    ).encode()


TLS_SEEN: set[str] = set()


def drive(port: int, ca: Path, body: bytes, count: int, out: list[float], failures: list[str]) -> None:
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("localhost", port, context=context)
    headers = {"Content-Type": "application/json"}
    for _ in range(count):
        started = time.perf_counter()
        conn.request("POST", "/v3/attest/gpu", body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        out.append(time.perf_counter() - started)
        if response.status != 200 or b'"JWT"' not in payload:
            failures.append(f"{response.status}: {payload[:200]!r}")
    if isinstance(conn.sock, ssl.SSLSocket):
        TLS_SEEN.add(conn.sock.version() or "?")
    conn.close()


class FreshRegistration:
    """The service's own core (`GuestVerificationService`, as `attest serve` builds it, no API server) with the
    sample's nonce registered afresh for each submission (an admin's interop challenge is single use); the verifier,
    and so its caches, is shared."""

    def __init__(self, verifier: Verifier, signer: TokenSigner) -> None:
        self.verifier, self.signer = verifier, signer
        self.policies = {"strict": Policy(revocation=RevocationMode.OFF)}

    def verify_submission(self, nonce: bytes, evidence: Sequence[GuestEvidence], *, client: str) -> SubmissionResult:
        core = GuestVerificationService(None, self.verifier, self.signer, AttestationSettings(), "gpu.cc-gpu.io",
                                        self.policies, clock=lambda: AT, registered=[nonce],
                                        limiter=RateLimiter(1e9, 10**9))
        return core.verify_submission(nonce, evidence, client=client)


def service(sample_dir: Path, requests: int, clients: int, kind: str) -> tuple[float, list[float]]:
    """(verifications per second, per-request latencies) with `clients` concurrent connections."""
    body = request_body(sample_dir)
    signer = TokenSigner(ec.generate_private_key(ec.SECP384R1()), kid="bench")
    nonce = bytes.fromhex(NONCE)
    with tempfile.TemporaryDirectory() as tmp:
        certs = pki.make(Path(tmp))
        with contextlib.ExitStack() as stack:
            if kind == "service":
                rim_dir = Path(tmp) / "rims"
                rim_dir.mkdir()
                report = parse_report(decode_report_text((sample_dir / "attestationReport.txt").read_bytes()))
                for name, rim_id in zip(RIMS, (driver_rim_id(report, "GH100"), vbios_rim_id(report)), strict=True):
                    (rim_dir / f"{rim_id}.swidtag").write_bytes((sample_dir / name).read_bytes())
                verifier = Verifier(TrustStore.default(), rim_source=DirectoryRimSource(rim_dir))
                server = ServiceServer(("127.0.0.1", 0), certs.serving.cert, certs.serving.key)
                register_nvidia_routes(server, FreshRegistration(verifier, signer), NvidiaTokens(signer))
                server.start()
                stack.callback(server.stop)
                port = server.port
            else:
                rims = [(sample_dir / name).read_bytes() for name in RIMS]
                core = InteropCore(Verifier(TrustStore.default()), Policy(revocation=RevocationMode.OFF), at=AT,
                                   rims=rims)
                core.register(nonce, clients + requests)  # one registration per submission
                stand_in = stack.enter_context(RouteServer(certs.serving.cert, certs.serving.key))
                register_nvidia_routes(stand_in, core, NvidiaTokens(signer))
                port = stand_in.httpd.server_address[1]
            failures: list[str] = []
            drive(port, certs.ca.cert, body, 1, [], failures)  # warm-up: fills the verifier's caches
            latencies: list[list[float]] = [[] for _ in range(clients)]
            threads = [
                threading.Thread(target=drive, args=(port, certs.ca.cert, body, requests // clients, latencies[i],
                                                     failures))
                for i in range(clients)
            ]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - started
    if failures:
        raise SystemExit(f"the service refused a benchmark request: {failures[0]}")
    flat = [x for chunk in latencies for x in chunk]
    return len(flat) / wall, flat


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="timed requests per configuration")
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections of the second configuration")
    parser.add_argument("--nvidia-runs", type=int, default=30)
    args = parser.parse_args()

    sample_dir = nvidia_files(SAMPLE_VERSION) / "samples"
    python = nvidia_python()
    one_rate, one = service(sample_dir, args.requests, 1, "service")
    nv = nvidia(python, sample_dir, args.nvidia_runs, quiet=True)
    many_rate, many = service(sample_dir, args.requests, args.clients, "service")
    stand_rate, stand = service(sample_dir, args.requests, 1, "stand-in")
    nv_times: list[float] = nv["times_s"]  # type: ignore[assignment]
    nv_median = statistics.median(nv_times)
    nv_rate = 1 / nv_median

    print(f"evidence: nv-local-gpu-verifier {SAMPLE_VERSION} sample + test RIMs, as of {AT.date()}, revocation off")
    print(f"POST /v3/attest/gpu over HTTPS ({', '.join(sorted(TLS_SEEN))}), real verifier, 3 ES384 tokens per answer")
    print("service: attest serve's server (a TLS connection per request) and core; "
          "stand-in: the tests' server, keep-alive\n")
    print(f"  service, 1 client                  {one_rate:7.1f} verifications/s   p50 {ms(pct(one, 50))}"
          f"   p99 {ms(pct(one, 99))}   ({len(one)} requests)")
    print(f"  service, {args.clients} clients                  {many_rate:7.1f} verifications/s   "
          f"p50 {ms(pct(many, 50))}   p99 {ms(pct(many, 99))}   ({len(many)} requests)")
    print(f"  stand-in, 1 client, keep-alive     {stand_rate:7.1f} verifications/s   p50 {ms(pct(stand, 50))}"
          f"   p99 {ms(pct(stand, 99))}   ({len(stand)} requests)")
    print(f"  NVIDIA Python verifier, in-process {nv_rate:7.1f} verifications/s   median {ms(nv_median)}"
          f"   p99 {ms(pct(nv_times, 99))}   ({len(nv_times)} runs)\n")
    print(f"  ratio, verifications/s: service 1 client {one_rate / nv_rate:5.1f}x NVIDIA's, "
          f"{args.clients} clients {many_rate / nv_rate:5.1f}x")
    print(f"  ratio, latency: NVIDIA median / service p50 (1 client) {nv_median / pct(one, 50):5.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
