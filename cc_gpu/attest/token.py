"""Signed verdict tokens: a JWS (ES384) a workload can verify offline with the verifier's public key.

NVIDIA's verifier signs its tokens with HS256 and a fixed secret, which authenticates nothing. Here the signer holds
a configured P-384 key and names it with a key id (`kid`); the verifier side takes a map of key ids to public keys
(from configuration, never from the token) and checks the algorithm, signature, issuer, expiry and not-before
against an injected time, and the nonce when the caller has one. The claims are the verdict's NVIDIA-style claims
plus the GPU identity (`ueid`, `hwmodel`), the nonce (`eat_nonce`), the verification time and an expiry; callers may
add claims (claim UID, pod UIDs, node) but cannot override the ones the verdict sets.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from cc_gpu.attest.errors import TokenError
from cc_gpu.attest.verdict import Verdict

ALGORITHM = "ES384"
DEFAULT_ISSUER = "cc-gpu-attestation"
DEFAULT_TTL = timedelta(minutes=5)
_RESERVED = frozenset(
    {"iss", "iat", "nbf", "exp", "jti", "eat_nonce", "ueid", "hwmodel", "x-nvidia-overall-att-result"}
)


def _p384_private(key: object) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise TokenError("token signing key must be an EC P-384 private key")
    return key


def load_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        return _p384_private(load_pem_private_key(path.read_bytes(), password=None))
    except (OSError, ValueError, TypeError) as e:
        raise TokenError(f"cannot load token signing key {path}: {e}") from e


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as e:
        raise TokenError(f"cannot load token public key {path}: {e}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise TokenError("token public key must be EC P-384")
    return key


class TokenSigner:
    def __init__(
        self, key: ec.EllipticCurvePrivateKey, kid: str, issuer: str = DEFAULT_ISSUER, ttl: timedelta = DEFAULT_TTL
    ) -> None:
        if not kid:
            raise TokenError("a token signing key needs a key id")
        self.key = _p384_private(key)
        self.kid = kid
        self.issuer = issuer
        self.ttl = ttl

    def sign(
        self, verdict: Verdict, extra: Mapping[str, Any] | None = None, *, expires_at: datetime | None = None
    ) -> str:
        """The token for `verdict`; `extra` claims are added (the verdict's own claims cannot be overridden)."""
        extra = dict(extra or {})
        clash = _RESERVED & extra.keys()
        if clash:
            raise TokenError(f"extra claims may not override {sorted(clash)}")
        return self.sign_claims({**extra, **verdict.claims()}, verdict.verified_at, expires_at=expires_at)

    def sign_claims(
        self, claims: Mapping[str, Any], issued: datetime, *, expires_at: datetime | None = None
    ) -> str:
        """A token over `claims` as given, plus issuer, issue time, validity and a unique id set here.

        For fronts that shape claims themselves (the NVIDIA-compatible API's overall and per-GPU tokens); the
        registered claims are always this signer's, whatever `claims` holds.
        """
        expiry = expires_at or issued + self.ttl
        if expiry <= issued:
            raise TokenError("token expiry must be after the verification time")
        body = dict(claims)
        body.update(
            {
                "iss": self.issuer,
                "iat": int(issued.timestamp()),
                "nbf": int(issued.timestamp()),
                "exp": int(expiry.timestamp()),
                "jti": str(uuid.uuid4()),
            }
        )
        return jwt.encode(body, self.key, algorithm=ALGORITHM, headers={"kid": self.kid, "typ": "JWT"})


class TokenVerifier:
    def __init__(self, keys: Mapping[str, ec.EllipticCurvePublicKey], issuer: str = DEFAULT_ISSUER) -> None:
        if not keys:
            raise TokenError("a token verifier needs at least one public key")
        self.keys = dict(keys)
        self.issuer = issuer

    def verify(self, token: str, at: datetime, *, nonce: str | None = None, require_ok: bool = True) -> dict[str, Any]:
        """The token's claims if it is authentic, current at `at`, for `nonce`, and (by default) a passing verdict."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise TokenError(f"not a JWS: {e}") from e
        if header.get("alg") != ALGORITHM:
            raise TokenError(f"token algorithm {header.get('alg')!r} is not {ALGORITHM}")
        key = self.keys.get(str(header.get("kid")))
        if key is None:
            raise TokenError(f"token key id {header.get('kid')!r} is not a configured key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["exp", "nbf", "iat", "iss"],
                },
            )
        except jwt.PyJWTError as e:
            raise TokenError(f"token does not verify: {e}") from e
        now = at.timestamp()
        if not isinstance(claims["exp"], int) or not isinstance(claims["nbf"], int):
            raise TokenError("token exp/nbf are not integers")
        if now >= claims["exp"]:
            raise TokenError("token has expired")
        if now < claims["nbf"]:
            raise TokenError("token is not valid yet")
        if nonce is not None and not hmac.compare_digest(str(claims.get("eat_nonce", "")), nonce.lower()):
            raise TokenError("token nonce does not match")
        if require_ok and claims.get("x-nvidia-overall-att-result") is not True:
            raise TokenError("token carries a failing verdict")
        return claims
