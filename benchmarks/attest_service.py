"""The verification service's NVIDIA-compatible front over HTTPS: verifications per second and latency, beside
NVIDIA's Python verifier timed in the same run.

    python benchmarks/attest_service.py [--requests 300] [--clients 4] [--nvidia-runs 30]

Each request is what NVIDIA's SDK sends in remote mode (`POST /v3/attest/gpu`, the 2.1.1 sample's report and chain,
base64), over TLS on 127.0.0.1 with keep-alive, to a threaded HTTPS server with the NVIDIA-compatible routes and a
core that judges each submission with the real verifier (the sample's two test RIMs, as of 2025-01-15, revocation
off) against a single-use challenge an admin registered, and answers with signed ES384 tokens (one per GPU and an
overall one). Warm: the verifier's caches are filled by a first request; the timed requests then pay for TLS
framing, JSON, base64, the report's parsing and signature check, the nonce and measurement comparison, and three
token signatures. The client (`http.client`, one connection per client thread) runs in the same process, so its
cost is counted too. NVIDIA's figure is its `attest()` per verification in-process (nvidia_harness.py, logging
silenced, OCSP stubbed), which does less (no transport, no token of any strength).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from attest_vs_nvidia import AT, NONCE, RIMS, SAMPLE_VERSION, nvidia, nvidia_python  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from cc_gpu.attest.evidence import decode_report_text  # noqa: E402
from cc_gpu.attest.nvcompat import NvidiaTokens, register_nvidia_routes  # noqa: E402
from cc_gpu.attest.ocsp import RevocationMode  # noqa: E402
from cc_gpu.attest.policy import Policy  # noqa: E402
from cc_gpu.attest.token import TokenSigner  # noqa: E402
from cc_gpu.attest.trust import TrustStore  # noqa: E402
from cc_gpu.attest.verifier import Verifier  # noqa: E402
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


def service(sample_dir: Path, requests: int, clients: int) -> tuple[float, list[float]]:
    """(verifications per second, per-request latencies) with `clients` concurrent connections."""
    body = request_body(sample_dir)
    rims = [(sample_dir / name).read_bytes() for name in RIMS]
    core = InteropCore(Verifier(TrustStore.default()), Policy(revocation=RevocationMode.OFF), at=AT, rims=rims)
    signer = TokenSigner(ec.generate_private_key(ec.SECP384R1()), kid="bench")
    nonce = bytes.fromhex(NONCE)
    with tempfile.TemporaryDirectory() as tmp:
        certs = pki.make(Path(tmp))
        with RouteServer(certs.serving.cert, certs.serving.key) as server:
            register_nvidia_routes(server, core, NvidiaTokens(signer))
            port = server.httpd.server_address[1]
            failures: list[str] = []
            core.register(nonce, clients)
            drive(port, certs.ca.cert, body, 1, [], failures)  # warm-up: fills the verifier's caches
            core.register(nonce, requests)  # one registration per timed submission, as an admin's interop check
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
    one_rate, one = service(sample_dir, args.requests, 1)
    nv = nvidia(python, sample_dir, args.nvidia_runs, quiet=True)
    many_rate, many = service(sample_dir, args.requests, args.clients)
    nv_times: list[float] = nv["times_s"]  # type: ignore[assignment]
    nv_median = statistics.median(nv_times)
    nv_rate = 1 / nv_median

    print(f"evidence: nv-local-gpu-verifier {SAMPLE_VERSION} sample + test RIMs, as of {AT.date()}, revocation off")
    print(f"service: POST /v3/attest/gpu over HTTPS ({', '.join(sorted(TLS_SEEN))}, keep-alive), real verifier, "
          "3 ES384 tokens per answer\n")
    print(f"  service, 1 connection             {one_rate:7.1f} verifications/s   p50 {ms(pct(one, 50))}"
          f"   p99 {ms(pct(one, 99))}   ({len(one)} requests)")
    print(f"  service, {args.clients} connections            {many_rate:7.1f} verifications/s   "
          f"p50 {ms(pct(many, 50))}   p99 {ms(pct(many, 99))}   ({len(many)} requests)")
    print(f"  NVIDIA Python verifier, in-process {nv_rate:7.1f} verifications/s   median {ms(nv_median)}"
          f"   p99 {ms(pct(nv_times, 99))}   ({len(nv_times)} runs)\n")
    print(f"  ratio, verifications/s: service 1 connection {one_rate / nv_rate:5.1f}x NVIDIA's, "
          f"{args.clients} connections {many_rate / nv_rate:5.1f}x")
    print(f"  ratio, latency: NVIDIA median / service p50 (1 connection) {nv_median / pct(one, 50):5.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
