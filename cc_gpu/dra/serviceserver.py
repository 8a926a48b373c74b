"""The verification service's HTTPS server: a route table over the standard library's threading HTTP server and TLS.

Routes are `(method, path) -> handler(Request) -> Response` (`attest/guest.py`), so further fronts (an API compatible
with NVIDIA's remote attestation service) add theirs with `add_route` without knowing this module. The guest path's
own route is `POST /v1/guest/attest`:

    request   {"nonce": "<64 hex>", "evidence": [{"report": "<base64>", "certChain": "<base64 PEM>", "arch": "HOPPER"}]}
    response  {"accepted": true, "token": "<JWS>", "claim": "ns/name", "failedChecks": [], "gpus": [<verdict>...]}

with 200 when accepted, 403 when refused (unknown or reused challenge, rejected evidence), 400 for a malformed body,
413 for one over `MAX_BODY`, 429 when the client is over its rate, 503 when the API server cannot be reached. The
access log names the method, path, status and client; never a body, a nonce or a token.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cc_gpu.attest.guest import (
    Handler,
    Request,
    Response,
    SubmissionResult,
    SubmissionVerifier,
    decode_submission,
)
from cc_gpu.dra.guestservice import MALFORMED, RATE, UNAVAILABLE

log = logging.getLogger("cc_gpu.dra.serviceserver")

MAX_BODY = 1 << 20


def json_response(status: int, body: Any) -> Response:
    return Response(status, {"Content-Type": "application/json"}, json.dumps(body).encode())


def submission_handler(service: SubmissionVerifier) -> Handler:
    def handle(request: Request) -> Response:
        try:
            nonce, evidence = decode_submission(request.body)
        except ValueError as e:
            return json_response(400, {"accepted": False, "failedChecks": [MALFORMED], "error": str(e)})
        result = service.verify_submission(nonce, evidence, client=request.client)
        return json_response(_status(result), {
            "accepted": result.accepted, "token": result.token, "claim": result.claim,
            "failedChecks": list(result.failed_checks), "gpus": [v.to_json() for v in result.per_gpu]})

    return handle


def _status(result: SubmissionResult) -> int:
    if result.accepted:
        return 200
    if RATE in result.failed_checks:
        return 429
    if UNAVAILABLE in result.failed_checks:
        return 503
    return 403


class ServiceServer:
    """The HTTPS server and its route table; `start()` serves on a thread, `stop()` ends it."""

    def __init__(self, listen: tuple[str, int], tls_cert: Path | None, tls_key: Path | None) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.add_route("GET", "/healthz", lambda _r: Response(200, {"Content-Type": "text/plain"}, b"ok\n"))
        routes = self.routes

        class _Handler(BaseHTTPRequestHandler):
            server_version = "cc-gpu-attestation"
            sys_version = ""
            timeout = 30

            def _serve(self, method: str) -> None:
                path, _, query = self.path.partition("?")
                handler = routes.get((method, path))
                if handler is None:
                    self._send(Response(404, {"Content-Type": "application/json"}, b'{"error": "no such route"}'))
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    length = -1
                if length < 0 or length > MAX_BODY:
                    self.close_connection = True  # the body is never read
                    self._send(Response(413, {"Connection": "close"}, b""))
                    return
                body = self.rfile.read(length) if length else b""
                request = Request(path, {k.lower(): v for k, v in self.headers.items()}, body,
                                  str(self.client_address[0]), method, query)
                try:
                    response = handler(request)
                except Exception:  # a handler's bug must not take the service down nor leak a traceback
                    log.exception("route failed", extra={"path": path})
                    response = Response(500, {"Content-Type": "application/json"}, b'{"error": "internal error"}')
                self._send(response)

            def _send(self, response: Response) -> None:
                self.send_response(response.status)
                for key, value in response.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, format: str, *args: Any) -> None:
                # The request line only (method and path: no query, no body); never a nonce or a token.
                log.info("request", extra={"client": self.client_address[0],
                                           "request": str(self.requestline).split("?", 1)[0][:200],
                                           "status": args[1] if len(args) > 1 else ""})

        self.httpd = ThreadingHTTPServer(listen, _Handler)
        self.httpd.daemon_threads = True
        if tls_cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(tls_cert), str(tls_key) if tls_key else None)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def add_route(self, method: str, path: str, handler: Callable[[Request], Response]) -> None:
        self.routes[(method.upper(), path)] = handler

    def start(self) -> ServiceServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="attestation-service", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
