"""Builds the attestation engine from the node's settings: provider, trust store, RIM and OCSP sources, keys, policies.

The one place that decides which adapters attestation runs on. On a simulated node (or with `provider =
"simulated"`) the evidence comes from a test CA made at start-up and the verifier trusts only that CA, with a
simulated OCSP responder; on a real node the evidence comes from NVML (or a directory of evidence collected
elsewhere), the trust store is NVIDIA's roots shipped in the package (or the admin's directory), and the network is
reached only when the admin allows online OCSP or names a RIM mirror.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta

from cc_gpu.attest.ocsp import DirectoryOcspStore, MemoryOcspStore, OcspStore, OcspTransport, RevocationChecker
from cc_gpu.attest.policy import Policy, load_policy
from cc_gpu.attest.sources import ChainedRimSource, DirectoryRimSource, HttpRimSource, RimSource
from cc_gpu.attest.trust import TrustStore
from cc_gpu.attest.verifier import Verifier
from cc_gpu.dra.attestation import AttestationEngine
from cc_gpu.dra.attestcfg import AttestationSettings
from cc_gpu.dra.evidence import (
    SIM_CA_FILE,
    SIM_FAULTS_FILE,
    DirectoryProvider,
    EvidenceProvider,
    NvmlProvider,
    SimulatedProvider,
)
from cc_gpu.dra.identity import FILE as IDENTITY_FILE
from cc_gpu.dra.identity import IdentityStore
from cc_gpu.dra.keys import NodeKeyStore
from cc_gpu.dra.settings import PluginSettings
from cc_gpu.errors import CcGpuError
from cc_gpu.host import pciids
from cc_gpu.host.ccmode import read_cc_mode
from cc_gpu.host.gpuevidence import HostDriverSwitch, NvmlEvidenceReader, current_driver
from cc_gpu.host.host import Host
from cc_gpu.host.pci import read_function
from cc_gpu.kube.api import KubeApi


class HostEvidenceOps:
    """The engine's `HostOps` over the host layer."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.switch = HostDriverSwitch(host)

    def driver_of(self, bdf: str) -> str | None:
        return current_driver(self.host, bdf)

    @contextlib.contextmanager
    def on_host_driver(self, bdf: str) -> Iterator[None]:
        with self.switch.on_host_driver(bdf):
            yield

    def cc_mode_of(self, bdf: str) -> str:
        """The GPU's CC mode as the host reads it now (for simulated evidence, which follows the simulated GPU)."""
        try:
            fn = read_function(self.host.io, self.host.roots, bdf)
        except CcGpuError:
            return "unknown"
        product = pciids.lookup(fn.vendor_id, fn.device_id)
        return read_cc_mode(self.host.io, self.host.roots, bdf, architecture=product.architecture, driver=fn.driver,
                            nvml=None)


def provider_kind(settings: PluginSettings) -> str:
    kind = settings.attestation.provider
    if kind == "auto":
        return "simulated" if settings.sim else "nvml"
    return kind


def build_verifier(a: AttestationSettings, trust: TrustStore, transport: OcspTransport | None, *,
                   simulated: bool = False) -> Verifier:
    """The verifier the node's settings describe: RIMs and OCSP answers from the admin's imported bundles
    (`rim_dir`, `ocsp_dir`), the network only where the admin allows it (`ocsp_online`, `rim_url`). Shared by the
    plugin and the verification service, so both judge evidence the same way."""
    http = None
    if not simulated and (a.ocsp_online or a.rim_url):
        from cc_gpu.attest.transport import UrllibTransport  # noqa: PLC0415 - only nodes that may reach out

        http = UrllibTransport()
        if a.ocsp_online:
            transport = http
    sources: list[RimSource] = []
    if a.rim_dir:
        sources.append(DirectoryRimSource(a.rim_dir))
    if a.rim_url and http is not None:
        sources.append(HttpRimSource(http, a.rim_url))
    store: OcspStore = DirectoryOcspStore(a.ocsp_dir) if a.ocsp_dir else MemoryOcspStore()
    return Verifier(
        trust,
        rim_source=ChainedRimSource(sources) if sources else None,
        revocation=RevocationChecker(store=store, transport=transport,
                                     online_cache=timedelta(seconds=a.ocsp_online_cache_seconds)),
    )


def load_policies(a: AttestationSettings) -> dict[str, Policy]:
    return {name: load_policy(path) for name, path in a.policies.items()}


def build_attestation(settings: PluginSettings, host: Host, kube: KubeApi) -> AttestationEngine:
    a = settings.attestation
    kind = provider_kind(settings)
    provider: EvidenceProvider | None = None
    transport: OcspTransport | None = None
    ops = HostEvidenceOps(host)
    if kind == "simulated":
        sim_root = settings.sim_root or settings.plugin_path / "sim"
        sim = SimulatedProvider(faults_file=sim_root / SIM_FAULTS_FILE, cc_mode_of=ops.cc_mode_of,
                                ca_file=sim_root / SIM_CA_FILE)
        provider, trust, transport = sim, sim.trust_store(), sim.ocsp_transport()
    else:
        trust = TrustStore.from_directory(a.trust_dir) if a.trust_dir else TrustStore.default()
        if kind == "nvml":
            provider = NvmlProvider(NvmlEvidenceReader())
        elif kind == "directory":
            assert a.evidence_dir is not None  # enforced by decode_settings
            provider = DirectoryProvider(a.evidence_dir)
    verifier = build_verifier(a, trust, transport, simulated=kind == "simulated")
    policies = load_policies(a)
    keys = NodeKeyStore(settings.plugin_path / "token-keys", settings.node_name,
                        timedelta(days=a.key_max_age_days), keep=a.keys_published,
                        overlap=timedelta(seconds=a.token_ttl_seconds))
    return AttestationEngine(
        settings=a,
        provider=provider,
        verifier=verifier,
        keys=keys,
        host=ops,
        kube=kube,
        driver=settings.driver_name,
        node=settings.node_name,
        token_dir=settings.plugin_path / "tokens",
        policies=policies,
        # Simulated GPUs keep their identities while the simulated node's CA file lives; a fresh node gets a fresh CA,
        # so their identities live in memory only.
        identities=IdentityStore(None if kind == "simulated" else settings.plugin_path / IDENTITY_FILE),
    )
