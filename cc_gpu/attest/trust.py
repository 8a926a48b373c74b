"""The verifier's trust anchors: the roots a device certificate chain and a RIM signing chain must end in.

Anchors come from configuration, never from evidence. The default store holds NVIDIA's two public roots, shipped as
package data byte-identical to the files in NVIDIA's published verifier (provenance and SHA-256 fingerprints are in
`cc_gpu/attest/roots/README.md` and checked by a test). Admins can point the verifier at their own directory
instead. Roots minted by the simulated-evidence generator carry a marker organisation name, and every store refuses
them unless it was built with `allow_simulated=True`, which only tests and the demo do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from cc_gpu.attest.errors import TrustStoreError

DEVICE_ROOT_FILE = "nvidia_device_identity_ca.pem"
RIM_ROOT_FILE = "nvidia_corim_signing_root_ca.pem"
SIMULATED_MARKER = "cc-gpu SIMULATED test CA - never trust"

# SHA-256 over the PEM files as published (also documented in trust/README.md; a test compares both).
SHIPPED_FINGERPRINTS = {
    DEVICE_ROOT_FILE: "6e6e91e84068cb7de2c715ca73d6df168a16b23d96a895b42e553b297a471bfc",
    RIM_ROOT_FILE: "afe8d01ab79b451fc6401a00bd8d3cba283e67339bd902e14bb41171eacb99d1",
}


def is_simulated(cert: x509.Certificate) -> bool:
    """True for certificates minted by `cc_gpu.attest.sim` (subject organisation carries the marker)."""
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return any(SIMULATED_MARKER in str(attr.value) for attr in orgs)


def _load_pems(data: bytes, source: str) -> tuple[x509.Certificate, ...]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TrustStoreError(f"{source}: not a PEM certificate file: {e}") from e
    return tuple(certs)


@dataclass(frozen=True)
class TrustStore:
    """Two sets of anchors: roots for GPU device chains and roots for RIM signing chains."""

    device_roots: tuple[x509.Certificate, ...]
    rim_roots: tuple[x509.Certificate, ...]
    allow_simulated: bool = False

    def __post_init__(self) -> None:
        if not self.device_roots or not self.rim_roots:
            raise TrustStoreError("a trust store needs at least one device root and one RIM root")
        if not self.allow_simulated:
            for cert in (*self.device_roots, *self.rim_roots):
                if is_simulated(cert):
                    raise TrustStoreError(
                        f"refusing simulated test root {cert.subject.rfc4514_string()!r} in a production trust store"
                    )

    @classmethod
    def default(cls) -> TrustStore:
        """NVIDIA's public roots as shipped in this package."""
        pkg = resources.files("cc_gpu.attest.roots")
        return cls(
            device_roots=_load_pems(pkg.joinpath(DEVICE_ROOT_FILE).read_bytes(), DEVICE_ROOT_FILE),
            rim_roots=_load_pems(pkg.joinpath(RIM_ROOT_FILE).read_bytes(), RIM_ROOT_FILE),
        )

    @classmethod
    def from_directory(cls, path: Path) -> TrustStore:
        """An admin-supplied store: `device/*.pem` and `rim/*.pem` under `path`."""
        device = cls._read_dir(path / "device")
        rim = cls._read_dir(path / "rim")
        return cls(device_roots=device, rim_roots=rim)

    @staticmethod
    def _read_dir(path: Path) -> tuple[x509.Certificate, ...]:
        try:
            files = sorted(path.glob("*.pem"))
            return tuple(cert for f in files for cert in _load_pems(f.read_bytes(), str(f)))
        except OSError as e:
            raise TrustStoreError(f"cannot read trust store directory {path}: {e}") from e

    @classmethod
    def of(
        cls, device_roots: Iterable[x509.Certificate], rim_roots: Iterable[x509.Certificate], *, allow_simulated: bool
    ) -> TrustStore:
        return cls(tuple(device_roots), tuple(rim_roots), allow_simulated=allow_simulated)

    def fingerprint(self) -> str:
        """A digest identifying this store's contents (part of cache keys, so caches never mix stores)."""
        h = hashlib.sha256()
        for group in (self.device_roots, self.rim_roots):
            for cert in group:
                h.update(cert.public_bytes(Encoding.DER))
            h.update(b"|")
        return h.hexdigest()
