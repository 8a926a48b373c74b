"""The per-claim challenge of the guest attestation path: minted at prepare, consumed once by the verification service.

A GPU in CC mode answers attestation requests only to the driver inside the confidential VM, so its evidence is
collected there and sent to the verification service. The challenge is what ties that evidence to one claim and one
moment: 32 random bytes (the SPDM nonce the GPU signs), minted by the plugin at prepare, given to the container
through the CDI spec (0600: it is a capability) and recorded in the plugin's checkpoint; only its SHA-256, the node
that minted it, when, until when it may be used and whether it is still open go into the claim's
`status.devices[].data`, the shared and durable place every service replica reads. The service consumes it with a
resourceVersion-conditioned write of the claim, so a challenge is used once across replicas and restarts.

The record's shape in `data.attestation.challenge` (camelCase, as the rest of the claim status):

    {"sha256": "<hex>", "node": "node-a", "mintedAt": "...Z", "expiresAt": "...Z", "state": "open"}

`state` becomes `consumed` (with `consumedAt`) in the same write that records the verdict.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

CHALLENGE_BYTES = 32  # the SPDM GET_MEASUREMENTS nonce is 32 bytes
OPEN = "open"
CONSUMED = "consumed"

ENV_CHALLENGE = "CC_GPU_ATTESTATION_CHALLENGE"
ENV_CLAIM_NAMESPACE = "CC_GPU_ATTESTATION_CLAIM_NAMESPACE"
ENV_CLAIM_NAME = "CC_GPU_ATTESTATION_CLAIM_NAME"
ENV_CLAIM_UID = "CC_GPU_ATTESTATION_CLAIM_UID"
ENV_DEVICES = "CC_GPU_ATTESTATION_DEVICES"
ENV_SERVICE_URL = "CC_GPU_ATTESTATION_SERVICE_URL"
ENV_SERVICE_CA = "CC_GPU_ATTESTATION_SERVICE_CA"


def rfc3339(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def digest(nonce: bytes) -> str:
    return hashlib.sha256(nonce).hexdigest()


@dataclass(frozen=True)
class Challenge:
    """One minted challenge: the nonce (a secret of the claim's pod) and the public record of it."""

    nonce: bytes
    node: str
    minted_at: datetime
    expires_at: datetime

    @classmethod
    def mint(cls, node: str, now: datetime, ttl: timedelta) -> Challenge:
        return cls(os.urandom(CHALLENGE_BYTES), node, now, now + ttl)

    @property
    def sha256(self) -> str:
        return digest(self.nonce)

    def record(self) -> dict[str, Any]:
        """What goes on the claim: never the nonce itself."""
        return {"sha256": self.sha256, "node": self.node, "mintedAt": rfc3339(self.minted_at),
                "expiresAt": rfc3339(self.expires_at), "state": OPEN}

    def checkpoint(self) -> dict[str, str]:
        return {"nonce": self.nonce.hex(), "node": self.node, "minted_at": self.minted_at.isoformat(),
                "expires_at": self.expires_at.isoformat()}

    @classmethod
    def from_checkpoint(cls, raw: Mapping[str, Any]) -> Challenge:
        return cls(bytes.fromhex(str(raw["nonce"])), str(raw["node"]), datetime.fromisoformat(str(raw["minted_at"])),
                   datetime.fromisoformat(str(raw["expires_at"])))


def matches(record: Mapping[str, Any], nonce: bytes) -> bool:
    """Is `record` (a claim's challenge record) the one for `nonce`? Constant-time on the digest."""
    return hmac.compare_digest(str(record.get("sha256", "")), digest(nonce))
