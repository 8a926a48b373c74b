"""The real network adapter for OCSP and the RIM service: plain HTTP(S) through urllib.

This is the only code in the attestation package that opens a socket. The verifier never builds it: the CLI (or the
plugin) does, and only when the policy asks for online revocation or a RIM mirror is configured. Tests and the
simulated node use `cc_gpu.attest.sim.SimOcspResponder` and directory sources instead.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from cc_gpu.attest.errors import OcspUnavailableError, RimFetchError

MAX_RESPONSE_BYTES = 8 * 1024 * 1024


class UrllibTransport:
    """Implements `OcspTransport` (POST) and `HttpGet` (GET)."""

    def __init__(self, user_agent: str = "cc-gpu-attest") -> None:
        self.user_agent = user_agent

    def post(self, url: str, body: bytes, timeout: float) -> bytes:
        if not url.startswith(("http://", "https://")):
            raise OcspUnavailableError(f"refusing OCSP URL {url!r}")
        req = urllib.request.Request(  # noqa: S310 - scheme checked above
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/ocsp-request", "User-Agent": self.user_agent},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - scheme checked above
                data: bytes = resp.read(MAX_RESPONSE_BYTES)
                return data
        except (urllib.error.URLError, OSError) as e:
            raise OcspUnavailableError(f"OCSP responder {url} unreachable: {e}", retry_after=30.0) from e

    def get(self, url: str, timeout: float) -> tuple[int, bytes]:
        if not url.startswith(("http://", "https://")):
            raise RimFetchError(f"refusing RIM URL {url!r}")
        req = urllib.request.Request(url, headers={"User-Agent": self.user_agent})  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - scheme checked above
                return int(resp.status), resp.read(MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as e:
            return int(e.code), b""
        except (urllib.error.URLError, OSError) as e:
            raise RimFetchError(f"RIM service {url} unreachable: {e}", retry_after=30.0) from e
