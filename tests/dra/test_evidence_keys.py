"""Evidence providers (NVML through a fake module speaking the real structures, directory, simulated), the node key
store and its ConfigMap, token binding checks, the temporary rebind, and the engine's refusals."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jwt
import pynvml
import pytest

from cc_gpu.attest.binding import check_binding, keys_from_configmap
from cc_gpu.attest.errors import TokenError
from cc_gpu.attest.ocsp import RevocationChecker, RevocationMode
from cc_gpu.attest.policy import Policy
from cc_gpu.attest.verifier import Verifier
from cc_gpu.dra.attestation import AttestationEngine, AttestationRejectedError
from cc_gpu.dra.attestcfg import AttestationRequest, AttestationSettings, ClaimLayer
from cc_gpu.dra.attestresult import DeviceResult, GpuResult
from cc_gpu.dra.errors import ClaimError
from cc_gpu.dra.evidence import DirectoryProvider, NvmlProvider, SimulatedProvider
from cc_gpu.dra.identity import IdentityMismatchError, IdentityStore, IdentityStoreError
from cc_gpu.dra.keys import NodeKeyStore, configmap_body, publish
from cc_gpu.files import UnsafeNameError
from cc_gpu.host.gpuevidence import (
    EvidenceUnavailableError,
    HostDriverSwitch,
    NvmlEvidenceReader,
    RebindRefusedError,
    current_driver,
    nvswitch_present,
)
from cc_gpu.host.sim import create_sim_host
from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.client import KubernetesApi

BDF = "0000:41:00.0"
NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def sim() -> SimulatedProvider:
    return SimulatedProvider()


def _verifier(sim: SimulatedProvider) -> Verifier:
    return Verifier(sim.trust_store(), revocation=RevocationChecker(transport=sim.ocsp_transport()))


class FakeNvml:
    """`pynvml` as a driver with one CC-capable GPU answers: the real ctypes structures, filled with real bytes."""

    def __init__(self, sim: SimulatedProvider, bdf: str, report_size: int | None = None) -> None:
        self.sim, self.bdf, self.report_size = sim, bdf, report_size
        self.sessions = 0  # open NVML sessions: init without shutdown

    def nvmlInit(self) -> None:
        self.sessions += 1

    def nvmlShutdown(self) -> None:
        self.sessions -= 1

    def nvmlDeviceGetHandleByPciBusId(self, bdf: str) -> str:
        if bdf != self.bdf:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return "handle"

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: str, nonce: bytes) -> Any:
        ev = self.sim.collect(self.bdf, nonce)
        out = pynvml.c_nvmlConfComputeGpuAttestationReport_t()
        ctypes.memmove(out.attestationReport, ev.report, len(ev.report))
        out.attestationReportSize = self.report_size if self.report_size is not None else len(ev.report)
        ctypes.memmove(out.nonce, nonce, len(nonce))
        return out

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: str) -> Any:
        chain = self.sim.collect(self.bdf, bytes(32)).cert_chain
        out = pynvml.c_nvmlConfComputeGpuCertificate_t()
        ctypes.memmove(out.attestationCertChain, chain, len(chain))
        out.attestationCertChainSize = len(chain)
        return out


def test_nvml_provider_reads_the_real_structures(sim: SimulatedProvider) -> None:
    nvml = FakeNvml(sim, BDF)
    provider = NvmlProvider(NvmlEvidenceReader(lambda: nvml))
    nonce = os.urandom(32)
    ev = provider.collect(BDF, nonce)
    assert ev.nonce == nonce and ev.source == "nvml"
    assert nvml.sessions == 0, "NVML is shut down again: no /dev/nvidia* stays open for the binder to trip on"
    rims = sim.collect(BDF, nonce).rims  # NVML gives no RIMs: a RIM source does; here the simulated one
    verdict = _verifier(sim).verify(ev.report, ev.cert_chain, nonce, Policy(), rims=rims)
    assert verdict.ok, verdict.failed


@pytest.mark.parametrize(
    ("name", "loader", "bdf", "message"),
    [
        ("NVML missing", lambda sim: (_ for _ in ()).throw(pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)),
         BDF, "NVML is not available"),
        ("GPU unknown to NVML", lambda sim: FakeNvml(sim, BDF), "0000:99:00.0", "NVML could not attest"),
        ("impossible size", lambda sim: FakeNvml(sim, BDF, report_size=10**7), BDF, "impossible attestation report"),
    ],
)
def test_nvml_provider_failures(sim: SimulatedProvider, name: str, loader: Any, bdf: str, message: str) -> None:
    nvml = None

    def load() -> Any:
        nonlocal nvml
        nvml = loader(sim)
        return nvml

    provider = NvmlProvider(NvmlEvidenceReader(load))
    with pytest.raises(EvidenceUnavailableError) as e:
        provider.collect(bdf, os.urandom(32))
    assert message in str(e.value), name
    assert nvml is None or nvml.sessions == 0


def test_directory_provider(sim: SimulatedProvider, tmp_path: Path) -> None:
    nonce = os.urandom(32)
    ev = sim.collect(BDF, nonce)
    base = tmp_path / BDF
    (base / "rims").mkdir(parents=True)
    (base / "report.hex").write_text(ev.report.hex())
    (base / "cert_chain.pem").write_bytes(ev.cert_chain)
    (base / "nonce.hex").write_text(nonce.hex())
    (base / "collected_at").write_text((NOW - timedelta(seconds=30)).isoformat())
    for i, rim in enumerate(ev.rims):
        (base / "rims" / f"{i}.swidtag").write_bytes(rim)
    got = DirectoryProvider(tmp_path).collect(BDF, os.urandom(32))
    assert got.nonce == nonce and got.source == "directory" and len(got.rims) == 2
    verdict = _verifier(sim).verify(got.report, got.cert_chain, got.nonce, Policy(), at=NOW,
                                    collected_at=got.collected_at, rims=got.rims)
    assert verdict.ok, verdict.failed
    stale = _verifier(sim).verify(got.report, got.cert_chain, got.nonce, Policy(max_evidence_age_s=10), at=NOW,
                                  collected_at=got.collected_at, rims=got.rims)
    assert [c.name for c in stale.failed] == ["x-cc-gpu-evidence-age"]
    with pytest.raises(EvidenceUnavailableError):
        DirectoryProvider(tmp_path).collect("0000:99:00.0", nonce)


def test_key_store_creates_reuses_rotates_and_prunes(tmp_path: Path) -> None:
    clock = [NOW]
    store = NodeKeyStore(tmp_path / "keys", "node-a", timedelta(days=30), keep=2, clock=lambda: clock[0])
    first = store.current()
    assert first.kid == "node-a.k1"
    assert (tmp_path / "keys" / "1.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert store.current().kid == "node-a.k1", "reused"
    again = NodeKeyStore(tmp_path / "keys", "node-a", timedelta(days=30), keep=2, clock=lambda: clock[0])
    assert again.current().public_pem() == first.public_pem(), "reused across restarts"
    clock[0] = NOW + timedelta(days=31)
    assert store.current().kid == "node-a.k2", "rotated by age"
    assert store.rotate().kid == "node-a.k3", "rotated on command"
    assert [k.kid for k in store.published()] == ["node-a.k2", "node-a.k3"]
    assert not (tmp_path / "keys" / "1.pem").exists(), "keys beyond `keep` are deleted"


@pytest.fixture()
def kube(tmp_path: Path) -> Iterator[KubernetesApi]:
    with ApiServerDouble() as server:
        server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cc-gpu-token-keys"}})
        api = KubernetesApi(server.write_kubeconfig(tmp_path / "kubeconfig"))
        try:
            yield api
        finally:
            api.close()


def test_keys_configmap_published_and_verified(tmp_path: Path, kube: KubernetesApi) -> None:
    store = NodeKeyStore(tmp_path / "keys", "node-a", timedelta(days=30))
    store.current()
    assert publish(kube, store, "cc-gpu-token-keys") is True
    assert publish(kube, store, "cc-gpu-token-keys") is False, "no write when nothing changed"
    store.rotate()
    assert publish(kube, store, "cc-gpu-token-keys") is True
    cm = kube.get_config_map("cc-gpu-token-keys", "cc-gpu-token-keys-node-a")
    assert sorted(keys_from_configmap(cm)) == ["node-a.k1", "node-a.k2"]


def test_configmap_of_one_node_cannot_carry_another_nodes_key(tmp_path: Path) -> None:
    store = NodeKeyStore(tmp_path / "keys", "node-a", timedelta(days=30))
    good = store.current()
    body = configmap_body("node-b", "ns", [good])
    warnings: list[str] = []
    with pytest.raises(TokenError, match="publishes no keys"):
        keys_from_configmap(body, warn=warnings.append)
    assert "belongs to another node" in warnings[0]
    body["metadata"]["annotations"] = {}
    with pytest.raises(TokenError, match="annotation"):
        keys_from_configmap(body)


def test_one_bad_entry_is_skipped_with_a_warning_not_fatal(tmp_path: Path) -> None:
    store = NodeKeyStore(tmp_path / "keys", "node-a", timedelta(days=30))
    body = configmap_body("node-a", "ns", [store.current()])
    body["data"].update({"node-a.kfoo.pem": body["data"]["node-a.k1.pem"], "node-a.k2.pem": "not a key",
                         "node-a.k01.pem": body["data"]["node-a.k1.pem"], "README": "x"})
    warnings: list[str] = []
    assert list(keys_from_configmap(body, warn=warnings.append)) == ["node-a.k1"]
    assert len(warnings) == 4 and all("entry skipped" in w for w in warnings)


CLAIMS = {"x-cc-gpu-node": "node-a", "x-cc-gpu-claim-uid": "c1", "x-cc-gpu-pod-uids": ["p1"]}


@pytest.mark.parametrize(
    ("name", "kid", "expect", "message"),
    [
        ("all match", "node-a.k1", {"claim_uid": "c1", "pod_uid": "p1", "node": "node-a"}, None),
        ("node key signs for another node", "node-b.k1", {}, "signed by the key of node 'node-b'"),
        ("other claim", "node-a.k1", {"claim_uid": "c2"}, "expected claim 'c2'"),
        ("other pod", "node-a.k1", {"pod_uid": "p2"}, "not issued for pod"),
        ("other node expected", "node-a.k1", {"node": "node-c"}, "expected node 'node-c'"),
    ],
)
def test_token_binding(name: str, kid: str, expect: dict[str, str], message: str | None) -> None:
    if message is None:
        check_binding(CLAIMS, kid, **expect)
    else:
        with pytest.raises(TokenError, match=message):
            check_binding(CLAIMS, kid, **expect)


def test_temporary_rebind_and_nvswitch_detection(tmp_path: Path) -> None:
    host = create_sim_host("h100-pcie-audio", tmp_path / "pcie")
    assert not nvswitch_present(host)
    switch = HostDriverSwitch(host)
    with pytest.raises(RebindRefusedError, match="not on a vfio driver"), switch.on_host_driver(BDF):
        pass
    kernel = host.io.kernel  # type: ignore[attr-defined]
    kernel.load_module("vfio-pci")
    kernel.write(kernel.sys / "bus/pci/devices" / BDF / "driver_override", "vfio-pci")
    kernel.write(kernel.sys / "bus/pci/drivers/nvidia/unbind", BDF)
    kernel.write(kernel.sys / "bus/pci/drivers/vfio-pci/bind", BDF)
    with switch.on_host_driver(BDF):
        assert current_driver(host, BDF) == "nvidia"
    assert current_driver(host, BDF) == "vfio-pci"
    dgx = create_sim_host("dgx-h100", tmp_path / "dgx")
    assert nvswitch_present(dgx)
    with pytest.raises(RebindRefusedError, match="NVSwitch"), HostDriverSwitch(dgx).on_host_driver("0000:18:00.0"):
        pass


class OnVfio:
    def driver_of(self, bdf: str) -> str | None:
        return "vfio-pci"

    def on_host_driver(self, bdf: str) -> Any:
        raise AssertionError("must not rebind")

    def cc_mode_of(self, bdf: str) -> str:
        return "unknown"  # a GPU on a vfio driver: its BAR is never read


@pytest.mark.parametrize(
    ("name", "allow_rebind", "req", "message"),
    [
        ("rebind not allowed by the node", False,
         AttestationRequest(required=True, claim=ClaimLayer(when_bound_to_vfio="rebind")),
         "not allowed by this node's configuration"),
        ("refuse", True, AttestationRequest(required=True, when_bound_to_vfio="refuse"), "refuses older evidence"),
        ("no discovery evidence", True, AttestationRequest(required=True), "no evidence was collected at discovery"),
    ],
)
def test_engine_refusals_on_vfio(
    sim: SimulatedProvider, tmp_path: Path, kube: KubernetesApi, name: str, allow_rebind: bool,
    req: AttestationRequest, message: str,
) -> None:
    engine = AttestationEngine(AttestationSettings(allow_rebind=allow_rebind), sim, _verifier(sim),
                               NodeKeyStore(tmp_path / "k", "node-a", timedelta(days=1)), OnVfio(), kube,
                               "gpu.cc-gpu.io", "node-a", tmp_path / "tokens")
    with pytest.raises(AttestationRejectedError, match=message):
        engine._evidence(BDF, engine.applied_for(req))


def test_engine_policy_resolution(sim: SimulatedProvider, tmp_path: Path, kube: KubernetesApi) -> None:
    engine = AttestationEngine(AttestationSettings(), sim, _verifier(sim),
                               NodeKeyStore(tmp_path / "k", "node-a", timedelta(days=1)), OnVfio(), kube,
                               "gpu.cc-gpu.io", "node-a", tmp_path / "tokens",
                               policies={"fleet": Policy(min_driver="1")})
    assert engine.policy_for(AttestationRequest(policy="fleet")).min_driver == "1"
    tightened = AttestationRequest(revocation="cached", claim=ClaimLayer(revocation="online"))
    assert engine.policy_for(tightened).revocation is RevocationMode.ONLINE
    assert engine.policy_for(AttestationRequest(revocation="off")).revocation is RevocationMode.OFF
    assert engine.policy_for(AttestationRequest(max_evidence_age_s=9)).max_evidence_age_s == 9
    with pytest.raises(ClaimError, match="'nope' is not configured"):
        engine.policy_for(AttestationRequest(policy="nope"))


def test_tokens_of_claims_no_longer_prepared_are_removed(
    sim: SimulatedProvider, tmp_path: Path, kube: KubernetesApi
) -> None:
    engine = AttestationEngine(AttestationSettings(), sim, _verifier(sim),
                               NodeKeyStore(tmp_path / "k", "node-a", timedelta(days=1)), OnVfio(), kube,
                               "gpu.cc-gpu.io", "node-a", tmp_path / "tokens")
    for uid in ("live", "gone"):
        (tmp_path / "tokens" / uid).mkdir(parents=True)
        (tmp_path / "tokens" / uid / "gpu.jwt").write_text("x")
    assert engine.remove_orphan_tokens({"live"}) == 1
    assert sorted(p.name for p in (tmp_path / "tokens").iterdir()) == ["live"]
    engine.close()


def test_keys_command_rotates_and_lists(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]

    def keys(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cc_gpu", "keys", *args, "--node-name", "node-a",
                               "--plugin-dir", str(tmp_path)], capture_output=True, text=True, check=False,
                              env={**os.environ, "PYTHONPATH": str(repo)}, timeout=60)

    assert keys("list").stdout == ""
    first = keys("rotate")
    assert first.returncode == 0 and "rotated: new signing key node-a.k1" in first.stdout
    second = keys("rotate")
    assert "node-a.k2" in second.stdout
    listed = keys("list").stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["node-a.k1", "node-a.k2"]
    assert "PRIVATE" not in first.stdout + second.stdout


def test_key_publication_failure_backs_off(sim: SimulatedProvider, tmp_path: Path) -> None:
    """A missing key namespace is retried with backoff, not with a failing write at every rescan."""
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    with ApiServerDouble() as server:  # no cc-gpu-token-keys namespace
        api = KubernetesApi(server.write_kubeconfig(tmp_path / "kubeconfig"))
        engine = AttestationEngine(AttestationSettings(), sim, _verifier(sim),
                                   NodeKeyStore(tmp_path / "k", "node-a", timedelta(days=1)), OnVfio(), api,
                                   "gpu.cc-gpu.io", "node-a", tmp_path / "tokens", clock=lambda: now[0])
        try:
            engine.publish_keys()
            assert server.writes("create", "configmaps") == 1
            for _ in range(5):  # rescans within the backoff window
                now[0] += timedelta(seconds=5)
                engine.publish_keys()
            assert server.writes("create", "configmaps") == 1
            server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cc-gpu-token-keys"}})
            now[0] += timedelta(seconds=30)
            engine.publish_keys()
            assert server.writes("create", "configmaps", succeeded=True) == 1
            now[0] += timedelta(seconds=5)
            engine.publish_keys()
            assert server.writes() == 2, "published once; nothing written while nothing changed"
        finally:
            engine.close()
            api.close()


def _engine(sim: SimulatedProvider, tmp_path: Path, kube: KubernetesApi, **settings: Any) -> AttestationEngine:
    return AttestationEngine(AttestationSettings(**settings), sim, _verifier(sim),
                             NodeKeyStore(tmp_path / "k", "node-a", timedelta(days=1)), OnVfio(), kube,
                             "gpu.cc-gpu.io", "node-a", tmp_path / "tokens")


def _accepted(token: str = "eyJ.token") -> DeviceResult:
    return DeviceResult("pool", "gpu-0", "gpu", True, "class:strict", (GpuResult(BDF, True, (), "simulated",
                                                                                 token=token),))


def test_tokens_travel_in_env_only_by_default(sim: SimulatedProvider, tmp_path: Path, kube: KubernetesApi) -> None:
    engine = _engine(sim, tmp_path, kube)
    env, mounts = engine.write_tokens("claim-1", _accepted())
    assert env == ("CC_GPU_ATTESTATION_TOKEN_0000_41_00_0=eyJ.token",) and mounts == ()
    assert not (tmp_path / "tokens").exists(), "no token file unless the admin asks for one"
    engine.close()


def test_token_files_when_asked_are_owner_only(sim: SimulatedProvider, tmp_path: Path, kube: KubernetesApi) -> None:
    engine = _engine(sim, tmp_path, kube, token_mount=True)
    _, (mount,) = engine.write_tokens("claim-1", _accepted())
    path = Path(mount.host_path)
    assert path.read_text() == "eyJ.token\n"
    assert path.stat().st_mode & 0o777 == 0o400
    assert path.parent.stat().st_mode & 0o777 == 0o700 and (tmp_path / "tokens").stat().st_mode & 0o777 == 0o700
    engine.remove_tokens("claim-1")
    assert not path.parent.exists()
    engine.close()


@pytest.mark.parametrize("uid", ["../escape", "a/../../escape", "..", "/abs", "a/b", ""])
def test_a_claim_uid_with_path_characters_writes_and_removes_nothing(
    sim: SimulatedProvider, tmp_path: Path, kube: KubernetesApi, uid: str
) -> None:
    engine = _engine(sim, tmp_path, kube, token_mount=True)
    victim = tmp_path / "escape"
    victim.mkdir()
    with pytest.raises(UnsafeNameError):
        engine.write_tokens(uid, _accepted())
    engine.remove_tokens(uid)
    assert victim.is_dir() and not list(victim.iterdir()) and not (tmp_path / "tokens").exists()
    engine.close()


def test_rotated_out_private_keys_are_deleted_after_the_overlap(tmp_path: Path) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    store = NodeKeyStore(tmp_path, "node-a", timedelta(days=30), keep=3, clock=lambda: now[0],
                         overlap=timedelta(hours=1))
    first = store.current()
    now[0] += timedelta(days=1)
    store.rotate()
    assert (tmp_path / "1.pem").exists(), "within the overlap window a signer taken before the rotation may finish"
    now[0] += timedelta(hours=2)
    assert store.current().kid == "node-a.k2"
    assert not (tmp_path / "1.pem").exists() and (tmp_path / "2.pem").exists()
    published = store.published()
    assert [k.kid for k in published] == ["node-a.k1", "node-a.k2"]
    assert published[0].private is None and published[0].public_pem() == first.public_pem()
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in tmp_path.glob("*.pem"))
    # A fresh store (a restarted plugin) reads the public half only.
    again = NodeKeyStore(tmp_path, "node-a", timedelta(days=30), clock=lambda: now[0])
    assert again.published()[0].public_pem() == first.public_pem()


OTHER = "0000:42:00.0"


def _place(root: Path, bdf: str, ev: Any, nonce: bytes) -> None:
    base = root / bdf
    (base / "rims").mkdir(parents=True)
    (base / "report.hex").write_text(ev.report.hex())
    (base / "cert_chain.pem").write_bytes(ev.cert_chain)
    (base / "nonce.hex").write_text(nonce.hex())
    for i, rim in enumerate(ev.rims):
        (base / "rims" / f"{i}.swidtag").write_bytes(rim)


def _judge(engine: AttestationEngine, bdf: str) -> GpuResult:
    plan = SimpleNamespace(uid="c1", namespace="ns", name="claim")
    return engine._attest_gpu(bdf, engine.applied_for(AttestationRequest(required=True)), plan,  # type: ignore[arg-type]
                              "gpu-0", ["p1"])


@pytest.mark.parametrize(
    ("name", "allow", "known", "outcome"),
    [
        ("foreign nonce off by default", False, {BDF: "x"}, {BDF: "nonce not ours", OTHER: "nonce not ours"}),
        ("the same report for two devices: only the one it belongs to", True, {BDF: "real"},
         {BDF: "", OTHER: "belongs to the GPU at 0000:41:00.0"}),
        ("an identity the node does not know cannot come from foreign-nonce evidence", True, {},
         {BDF: "no identity is known for 0000:41:00.0", OTHER: "no identity is known"}),
        ("a different GPU's report for a known device", True, {BDF: "someone-else"},
         {BDF: "is not the identity someone-else this node knows for 0000:41:00.0"}),
    ],
)
def test_evidence_is_bound_to_the_pci_device(
    sim: SimulatedProvider, tmp_path: Path, kube: KubernetesApi, name: str, allow: bool, known: dict[str, str],
    outcome: dict[str, str],
) -> None:
    nonce = os.urandom(32)
    ev = sim.collect(BDF, nonce)
    real = _verifier(sim).verify(ev.report, ev.cert_chain, nonce, Policy(), rims=ev.rims).identity.ueid
    assert real
    root = tmp_path / "evidence"
    for bdf in (BDF, OTHER):
        _place(root, bdf, ev, nonce)
    identities = IdentityStore(tmp_path / "state" / "gpu-identities.json")
    for bdf, ueid in known.items():
        identities.learn(bdf, real if ueid == "real" else ueid, "nvml at discovery", NOW)
    engine = AttestationEngine(AttestationSettings(allow_foreign_nonce=allow), DirectoryProvider(root),
                               _verifier(sim), NodeKeyStore(tmp_path / "k", "node-a", timedelta(days=1)), OnVfio(),
                               kube, "gpu.cc-gpu.io", "node-a", tmp_path / "tokens", identities=identities)
    for bdf, want in outcome.items():
        result = _judge(engine, bdf)
        if want:
            assert not result.ok and want in " ".join(result.reasons), (name, bdf, result.reasons)
        else:
            assert result.ok, (name, result.reasons)
            assert result.nonce_ours is False and result.compact()["nonce"] == "not ours"
            claims = jwt.decode(result.token or "", options={"verify_signature": False})
            assert claims["x-cc-gpu-nonce"] == "not ours"
    if known.get(BDF) == "someone-else":
        assert real in " ".join(_judge(engine, BDF).reasons), "the rejection names both identities"
    engine.close()


def test_identities_are_learned_from_our_nonce_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "gpu-identities.json"
    store = IdentityStore(path)
    store.learn(BDF, "u1", "nvml at discovery", NOW)
    store.learn(BDF, "u2", "nvml", NOW)  # first one wins
    store.learn(OTHER, "u1", "nvml", NOW)  # an identity belongs to one device
    assert path.stat().st_mode & 0o777 == 0o600
    again = IdentityStore(path)
    assert again.get(BDF) is not None and again.get(BDF).ueid == "u1" and again.get(OTHER) is None  # type: ignore[union-attr]
    again.check(BDF, "u1")
    with pytest.raises(IdentityMismatchError, match="u2 is not the identity u1"):
        again.check(BDF, "u2")
    path.write_text("{")
    with pytest.raises(IdentityStoreError):
        IdentityStore(path)


@pytest.mark.parametrize(("plain_vfio", "attested"), [(False, 1), (True, 2)])
def test_node_minimum_can_cover_the_plain_vfio_class(
    sim: SimulatedProvider, tmp_path: Path, kube: KubernetesApi, plain_vfio: bool, attested: int
) -> None:
    from cc_gpu.dra.attestcfg import NodeMinimum  # noqa: PLC0415
    from cc_gpu.dra.opaque import VfioDeviceConfig  # noqa: PLC0415

    engine = _engine(sim, tmp_path, kube, minimum=NodeMinimum(required=True, plain_vfio=plain_vfio))
    plain = SimpleNamespace(config=VfioDeviceConfig())
    section = SimpleNamespace(config=VfioDeviceConfig(extra={"attestation": AttestationRequest()}))
    wanted = engine._wanted(SimpleNamespace(devices=[plain, section]))  # type: ignore[arg-type]
    assert len(wanted) == attested
    assert all(engine.applied_for(req).required for _, req in wanted), "the floor makes them required"
    engine.close()
