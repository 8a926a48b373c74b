"""The NVIDIA-compatible front served over HTTPS for tests and the benchmark, and a small admin-fed core.

`RouteServer` offers the server contract routes are added through (`add_route(method, path, handler)` with the
`Request` / `Response` of `cc_gpu.attest.guest`), over TLS, threaded, with keep-alive. `InteropCore` is the core an
admin's interop check needs: challenges the admin registers (single use), judged by the real `Verifier` under a
given policy, time and RIMs. The fixtures take both as parameters, so the same checks run against the service's own
server and core (`cc-gpu attest serve`).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import threading
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cc_gpu.attest import policy as P
from cc_gpu.attest.guest import GuestEvidence, Handler, Request, Response, SubmissionResult
from cc_gpu.attest.policy import Policy
from cc_gpu.attest.verifier import Verifier

_CHAIN_GOOD = {"x-nvidia-cert-status": "valid", "x-nvidia-cert-ocsp-status": "good"}
# NVIDIA's remote GPU policy example, version 4.0 (nvtrust, attestation_sdk/tests/policies/remote/v4), as data.
NVIDIA_POLICY = {
    "version": "4.0",
    "authorization-rules": {
        "type": "JWT",
        "overall-claims": {"x-nvidia-overall-att-result": True, "x-nvidia-ver": "3.0"},
        "detached-claims": {
            "measres": "success",
            "x-nvidia-gpu-arch-check": True,
            "x-nvidia-gpu-attestation-report-parsed": True,
            "x-nvidia-gpu-attestation-report-nonce-match": True,
            "x-nvidia-gpu-attestation-report-signature-verified": True,
            "x-nvidia-gpu-attestation-report-cert-chain": _CHAIN_GOOD,
            "x-nvidia-gpu-attestation-report-cert-chain-fwid-match": True,
            **{f"x-nvidia-gpu-{kind}-rim-{what}": True for kind in P.RIM_KINDS
               for what in ("fetched", "schema-validated", "signature-verified", "version-match",
                            "measurements-available")},
            "x-nvidia-gpu-driver-rim-cert-chain": _CHAIN_GOOD,
            "x-nvidia-gpu-vbios-rim-cert-chain": _CHAIN_GOOD,
            "x-nvidia-gpu-vbios-index-no-conflict": True,
        },
    },
}

MAX_BODY = 2 << 20


class RouteServer:
    def __init__(self, cert: Path, key: Path, host: str = "127.0.0.1") -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        routes = self.routes

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: without this, 40 ms of delayed ACK

            def _dispatch(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._send(Response(413, {"Content-Type": "application/json"}, b'{"message":"too large"}'))
                    self.close_connection = True
                    return
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                handler = routes.get((method, path))
                if handler is None:
                    self._send(Response(404, {"Content-Type": "application/json"}, b'{"message":"not found"}'))
                    return
                request = Request(path, dict(self.headers.items()), body, self.client_address[0], method, query)
                try:
                    response = handler(request)
                except Exception:
                    response = Response(500, {"Content-Type": "application/json"}, b'{"message":"internal error"}')
                self._send(response)

            def _send(self, response: Response) -> None:
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            def do_GET(self) -> None:
                self._dispatch("GET")

            def do_POST(self) -> None:
                self._dispatch("POST")

            def log_message(self, format: str, *args: object) -> None:
                return

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        self.httpd = ThreadingHTTPServer((host, 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add_route(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.httpd.server_address[1]}"

    def __enter__(self) -> RouteServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class InteropCore:
    """Admin-registered challenges, each registration usable once, judged by the real verifier."""

    def __init__(self, verifier: Verifier, policy: Policy, *, at: datetime, rims: Sequence[bytes] = ()) -> None:
        self.verifier = verifier
        self.policy = policy
        self.at = at
        self.rims = tuple(rims)
        self._open: Counter[bytes] = Counter()
        self._lock = threading.Lock()

    def register(self, nonce: bytes, uses: int = 1) -> None:
        """Registers a challenge for `uses` submissions (each registration is consumed by one)."""
        with self._lock:
            self._open[nonce] += uses

    def verify_submission(self, nonce: bytes, evidence: Sequence[GuestEvidence], *, client: str) -> SubmissionResult:
        with self._lock:
            known = self._open[nonce] > 0
            if known:
                self._open[nonce] -= 1
        if not known:
            return SubmissionResult(False, (), None, ("x-cc-gpu-challenge-unknown",), None)
        verdicts = tuple(
            self.verifier.verify(e.report, e.cert_chain_pem, nonce, self.policy, at=self.at, rims=self.rims)
            for e in evidence
        )
        failed = tuple(sorted({c.name for v in verdicts for c in v.failed}))
        return SubmissionResult(all(v.ok for v in verdicts), verdicts, None, failed, None)


def sdk_evidence(report: bytes, chain_pem: bytes, arch: str = "HOPPER") -> list[dict[str, str]]:
    """One GPU's evidence as NVIDIA's SDK hands it to `attest()` (its `get_evidence()` needs NVML: built here)."""
    return [
        {
            "evidence": base64.b64encode(report).decode(),
            "certificate": base64.b64encode(chain_pem).decode(),
            "arch": arch,
        }
    ]


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


CLIENT = Path(__file__).with_name("nvsdk_client.py")


def run_sdk(sdk_python: Path, url: str, ca: Path, tmp: Path, evidence: list[dict[str, str]], nonce: bytes,
            policy: object) -> dict[str, Any]:
    """NVIDIA's SDK in remote mode (nvsdk_client.py in its own virtualenv) against `url`, trusting `ca`: its
    `attest()` and `validate_token(policy)` results and its token."""
    out = tmp / "sdk-result.json"
    subprocess.run(
        [
            str(sdk_python), str(CLIENT), "--url", url, "--nonce", nonce.hex(),
            "--evidence", str(write_json(tmp / "sdk-evidence.json", evidence)),
            "--policy", str(write_json(tmp / "sdk-policy.json", policy)),
            "--out", str(out),
        ],
        check=True, cwd=tmp, env={**os.environ, "REQUESTS_CA_BUNDLE": str(ca)}, capture_output=True, timeout=300,
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def service_eat(sdk_token: str) -> Any:
    """The service's detached EAT as the SDK recorded it under its remote GPU verifier."""
    return json.loads(sdk_token)[1]["REMOTE_GPU_CLAIMS"]
