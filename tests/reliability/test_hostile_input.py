"""Hostile input, fuzzed with hypothesis: whatever arrives, the only exceptions are the project's typed ones.

Targets: the opaque config decoder, claim parsing, the checkpoint loader (corruption detected, the previous generation
keeps the record of bound devices), CDI names and ids, and sysfs anomalies on the simulated kernel (missing files,
garbage contents, a device that vanishes in the middle of a bind or restore). The attestation evidence parser has its
own fuzz suite beside it (`tests/attest/test_fuzz.py`). Example counts are in `EXAMPLES` and in the session summary.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cc_gpu.dra import cdi, opaque
from cc_gpu.dra.checkpoint import PREPARE_COMPLETED, PREPARE_STARTED, Checkpoint, ClaimEntry, PreparedDevice, decode
from cc_gpu.dra.claims import parse_claim
from cc_gpu.dra.errors import CdiError, CheckpointCorruptError, OpaqueConfigError
from cc_gpu.dra.hostport import device_name_for, views_from
from cc_gpu.dra.settings import Selection
from cc_gpu.errors import CcGpuError
from cc_gpu.host.binder import Binder, BindPolicy
from cc_gpu.host.discovery import discover
from cc_gpu.host.sim import create_sim_host, sim_kernel
from tests.cdi.schema import validate_cdi
from tests.reliability.summary import SUMMARY

EXAMPLES = {
    "opaque config parameters": 1000,
    "opaque config, valid header": 500,
    "claim documents": 1000,
    "checkpoint bytes": 1500,
    "checkpoint generations": 300,
    "CDI annotation": 2000,
    "CDI spec names and nodes": 1000,
    "CDI claim paths": 1000,
    "sysfs anomalies": 150,
    "device vanishing mid-operation": 80,
}


def fuzz(target: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    SUMMARY["fuzz examples"] = ", ".join(f"{k} {v}" for k, v in EXAMPLES.items())
    return settings(max_examples=EXAMPLES[target], deadline=None, suppress_health_check=[HealthCheck.too_slow])


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
WORDS = st.sampled_from(["auto", "legacy", "iommufd", "never", "", "AUTO", "v1alpha1", "cc-gpu.io/v1alpha1"])

# ---- opaque config ---------------------------------------------------------------------------------------------------


@fuzz("opaque config parameters")
@given(JSON)
def test_opaque_parameters_any_json(params: Any) -> None:
    try:
        opaque.decode_one(params, opaque.VfioDeviceConfig())
    except OpaqueConfigError as e:
        assert str(e)


@fuzz("opaque config, valid header")
@given(st.dictionaries(st.sampled_from(["iommuMode", "resetOnRelease", "attestation", "x"]), JSON | WORDS, max_size=3))
def test_opaque_fields_behind_a_valid_header(fields: dict[str, Any]) -> None:
    params = {"apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig", **fields}
    try:
        cfg = opaque.decode_one(params, opaque.VfioDeviceConfig())
    except OpaqueConfigError:
        return
    assert cfg.iommu_mode in opaque.IOMMU_MODES and cfg.reset_on_release in opaque.RESET_MODES


# ---- claims ----------------------------------------------------------------------------------------------------------

DRIVER = "gpu.cc-gpu.io"


@st.composite
def claims(draw: st.DrawFn) -> dict[str, Any]:
    """Claim documents shaped like the API's but with hostile values, some parts replaced by arbitrary JSON."""
    result = {"request": draw(st.text(max_size=8) | WORDS), "driver": draw(st.sampled_from([DRIVER, "other.io"])),
              "pool": draw(st.sampled_from(["node-a", "node-b"])), "device": draw(st.sampled_from(["gpu-a", "x"]))}
    config = {"source": draw(st.sampled_from(["FromClass", "FromClaim", "Other"])),
              "requests": draw(st.lists(st.text(max_size=4), max_size=2)),
              "opaque": {"driver": DRIVER, "parameters": draw(JSON)}}
    doc: dict[str, Any] = {
        "metadata": {"uid": "u1", "namespace": "ns", "name": "c"},
        "status": {
            "allocation": {"devices": {"results": [result], "config": [config]}},
            "reservedFor": [{"resource": "pods", "name": "p", "uid": "pu"}],
        },
    }
    for path in draw(st.lists(st.sampled_from(["status", "allocation", "devices", "results", "config", "opaque",
                                               "result", "reservedFor", "requests"]), max_size=2)):
        junk = draw(JSON)
        if path == "status":
            doc["status"] = junk
        elif path in ("allocation", "reservedFor") and isinstance(doc["status"], dict):
            doc["status"][path] = junk
        elif path == "devices" and isinstance(doc["status"], dict):
            if isinstance(doc["status"].get("allocation"), dict):
                doc["status"]["allocation"]["devices"] = junk
        elif path in ("results", "config") and isinstance(doc["status"], dict):
            alloc = doc["status"].get("allocation")
            devs = alloc.get("devices") if isinstance(alloc, dict) else None
            if isinstance(devs, dict):
                devs[path] = junk
        elif path == "result":
            result[draw(st.sampled_from(list(result)))] = junk
        elif path == "opaque":
            config["opaque"] = junk
        elif path == "requests":
            config["requests"] = junk
    return doc


@fuzz("claim documents")
@given(claims())
def test_claim_parsing_raises_only_typed_errors(claim: dict[str, Any]) -> None:
    from cc_gpu.dra.ports import GpuView  # noqa: PLC0415

    gpu = GpuView("gpu-a", "0000:3b:00.0", ("0000:3b:00.0",), ("0000:3b:00.0",), 14, "0x10de", "0x2330", "H100",
                  "hopper", 0, "pci0000:3a", False, True, "on", "nvidia", None)
    try:
        parse_claim(claim, "u1", DRIVER, "node-a", {"gpu-a": gpu})
    except CcGpuError as e:
        assert str(e)


# ---- checkpoint ------------------------------------------------------------------------------------------------------

ENTRY = ClaimEntry("u1", "ns", "c", PREPARE_COMPLETED, "b1", (
    PreparedDevice("gpu0", "node-a", "gpu-0000-3b-00-0", 14, ("0000:3b:00.0",), {"0000:3b:00.0": "nvidia"},
                   ("/dev/vfio/14",), ("cc-gpu.io/vfio=u1-gpu-0000-3b-00-0",)),))
SECOND = ClaimEntry("u2", "ns", "d", PREPARE_STARTED, "b1")


@st.composite
def mutated(draw: st.DrawFn, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "zero-fill"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=6))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            data[pos:] = bytes(len(data) - pos)
    return bytes(data)


def _raw(claims: dict[str, ClaimEntry]) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        cp = Checkpoint(Path(d))
        for e in claims.values():
            cp.put(e)
        return cp.path.read_bytes()


RAW = _raw({"u1": ENTRY, "u2": SECOND})


@fuzz("checkpoint bytes")
@given(mutated(RAW))
def test_checkpoint_corruption_is_detected(raw: bytes) -> None:
    try:
        claims = decode(raw)
    except CheckpointCorruptError:
        return
    assert claims == {"u1": ENTRY, "u2": SECOND}, "a mutation that passes verification must not change the claims"


@fuzz("checkpoint generations")
@given(st.data())
def test_corrupt_checkpoint_falls_back_to_the_previous_generation(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as d:
        cp = Checkpoint(Path(d))
        cp.put(ENTRY)
        cp.put(SECOND)
        good = cp.path.read_bytes()
        cp.path.write_bytes(data.draw(mutated(good)))
        claims = Checkpoint(Path(d)).read()
        assert claims in ({"u1": ENTRY, "u2": SECOND}, {"u1": ENTRY}), "the bound device's record must survive"
        if claims == {"u1": ENTRY}:
            assert list(Path(d).glob("checkpoint.json.corrupt-*")), "the corrupt file is kept for the admin"
            assert Checkpoint(Path(d)).read() == claims, "the recovered generation is the primary again"


def test_both_generations_corrupt_fails_closed(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path)
    cp.put(ENTRY)
    cp.put(SECOND)
    cp.path.write_bytes(b"{")
    cp.prev_path.write_bytes(b"")
    with pytest.raises(CheckpointCorruptError, match="previous generation is unreadable"):
        Checkpoint(tmp_path).read()


def test_crash_between_the_two_renames_reads_the_previous_generation(tmp_path: Path) -> None:
    cp = Checkpoint(tmp_path)
    cp.put(ENTRY)
    cp.put(SECOND)
    cp.path.unlink()  # what a kill between moving the old generation aside and renaming the new one leaves
    assert Checkpoint(tmp_path).read() == {"u1": ENTRY}


# ---- CDI names and ids -----------------------------------------------------------------------------------------------

NAME_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=20) | st.from_regex(r"[a-z0-9./_:-]{1,20}")


@fuzz("CDI annotation")
@given(st.lists(NAME_TEXT | st.just(f"{cdi.KIND}=pod-x"), max_size=3).map(",".join))
def test_pod_annotation(value: str) -> None:
    name = cdi.pod_device_from_annotation(value)
    assert name is None or (name.startswith(cdi.POD_DEVICE_PREFIX) and "/" not in name and "=" not in name)


@fuzz("CDI spec names and nodes")
@given(NAME_TEXT, st.lists(st.sampled_from(["/dev/vfio/7", "/dev/vfio/vfio", "/dev/iommu", "/dev/vfio/devices/vfio0",
                                             "/dev/nvidia0", "/etc/passwd", "", "/dev/vfio/../../etc"]), max_size=3))
def test_spec_names_and_nodes(name: str, nodes: list[str]) -> None:
    try:
        spec = cdi.build_spec([cdi.CdiDevice(name, tuple(nodes))])
    except CdiError:
        return
    validate_cdi(spec)


@fuzz("CDI claim paths")
@given(NAME_TEXT)
def test_claim_spec_path_stays_in_the_cdi_root(uid: str) -> None:
    root = Path("/run/cdi")
    writer = cdi.CdiWriter(root)
    try:
        path = writer.claim_path(uid)
    except CdiError:
        return
    assert path.parent == root and re.fullmatch(r"cc-gpu\.io-vfio_[A-Za-z0-9_.:-]+\.json", path.name)
    assert cdi.CdiWriter.id_of(path) == uid


# ---- sysfs anomalies on the simulated kernel -------------------------------------------------------------------------

TOPOLOGY = "h100-pcie-audio"
FAST = BindPolicy(bind_timeout=0.3, in_use_timeout=0.1, lock_timeout=1.0, poll_interval=0.01)


@contextmanager
def sim_copy() -> Iterator[Path]:
    """A fresh copy of a pristine simulated node (copying is ten times cheaper than building)."""
    template = _template()
    with tempfile.TemporaryDirectory() as d:
        shutil.copytree(template, Path(d) / "n", symlinks=True)
        yield Path(d) / "n"


_TEMPLATE: list[Path] = []


def _template() -> Path:
    if not _TEMPLATE:
        root = Path(tempfile.mkdtemp(prefix="cc-gpu-sim-")) / "n"
        create_sim_host(TOPOLOGY, root / "tree", state=root / "state")
        _TEMPLATE.append(root)
    return _TEMPLATE[0]


def _files() -> list[str]:
    tree = _template() / "tree"
    out = []
    for sub in ("sys/devices", "sys/kernel/iommu_groups", "sys/bus/pci/devices", "sys/module", "dev/vfio"):
        out += sorted(str(p.relative_to(tree)) for p in (tree / sub).rglob("*") if p.is_file() or p.is_symlink())
    return out


FILES = _files()
GARBAGE = st.sampled_from([b"", b"\x00\xff\xfe", b"0xzz\n", b"-1\n", b"99999999999999999999\n", "é".encode() * 50,
                           b"\n\n", b"0x10de 0x10de\n"])


def _exercise(root: Path) -> None:
    """What the plugin does with a node: discover, advertise, bind and restore every advertised group."""
    host = create_sim_host(TOPOLOGY, root / "tree", state=root / "state")
    try:
        views = views_from(discover(host), Selection())
    except CcGpuError:
        return
    binder = Binder(host, FAST)
    for v in views:
        with suppress(CcGpuError):
            binder.bind(v.iommu_group, "u1")
        with suppress(CcGpuError):
            binder.restore(v.iommu_group, "u1")
        assert device_name_for(v.bdf) == v.name


@fuzz("sysfs anomalies")
@given(st.lists(st.tuples(st.sampled_from(FILES), st.sampled_from(["delete", "garbage", "dangling"]), GARBAGE),
                min_size=1, max_size=3))
def test_sysfs_anomalies_raise_only_typed_errors(faults: list[tuple[str, str, bytes]]) -> None:
    with sim_copy() as root:
        for rel, kind, junk in faults:
            path = root / "tree" / rel
            if not (path.exists() or path.is_symlink()):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
                continue
            path.unlink()
            if kind == "garbage":
                path.write_bytes(junk)
            elif kind == "dangling":
                path.symlink_to("../../nowhere")
        _exercise(root)


VANISH_POINTS = ("bind-after-record", "bind-after-unbind", "bind-after-override", "bind-after-member",
                 "bind-after-nodes", "restore-after-marked", "restore-after-unbind", "restore-after-member")


@fuzz("device vanishing mid-operation")
@given(st.sampled_from(VANISH_POINTS), st.integers(1, 2), st.sampled_from(["0000:41:00.0", "0000:41:00.1"]))
def test_device_vanishing_mid_operation(point: str, nth: int, bdf: str) -> None:
    with sim_copy() as root:
        host = create_sim_host(TOPOLOGY, root / "tree", state=root / "state")
        kernel = sim_kernel(host)
        group = 30
        passes = {"n": 0}

        def vanish(name: str) -> None:
            if name == point:
                passes["n"] += 1
                if passes["n"] == nth and kernel.device_dir(bdf).exists():
                    kernel.remove_device(bdf)

        binder = Binder(host, FAST)
        with mock.patch("cc_gpu.host.binder.crashpoint", vanish):
            with suppress(CcGpuError):
                binder.bind(group, "u1")
            with suppress(CcGpuError):
                binder.restore(group, "u1")
        survivors = [b for b in ("0000:41:00.0", "0000:41:00.1") if (root / "tree/sys/bus/pci/devices" / b).exists()]
        originals = {"0000:41:00.0": "nvidia", "0000:41:00.1": "snd_hda_intel"}
        status = binder.status(group) if survivors else None
        if status is not None and status.record is None:
            for b in survivors:
                assert kernel.driver_of(b) == originals[b], f"{b} stranded on {kernel.driver_of(b)}"

