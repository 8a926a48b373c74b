"""cc-gpu's CDI specs as the real consumers see them: the Go CDI libraries resolve our ids and the pod annotation.

Every consumer test runs twice, once with the library version Kata's Go runtime resolves with (v0.6.0, which also
checks each spec's `cdiVersion` against the minimum its features need) and once with containerd 2.2/2.3's (v1.1.0), over
a CDI root holding our specs, and asserts the `linux.devices` it injects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.cdi.consumer import Consumer, ConsumerError, device_paths
from tests.cdi.schema import validate_cdi, validate_schema
from tests.cdi.shapes import iommufd_nodes, legacy_nodes, write_claim_spec, write_pod_spec

CLAIM_A = "6f1e2d3c-0000-4aaa-8bbb-111111111111"
CLAIM_B = "6f1e2d3c-0000-4aaa-8bbb-222222222222"
ADMISSION_UID = "0b1f3c2e-1111-4222-8333-944455556666"
NULL = os.stat("/dev/null").st_rdev


CASES = [
    ("legacy group", {"gpu-0": legacy_nodes(7)}, ["/dev/vfio/7", "/dev/vfio/vfio"]),
    ("iommufd", {"gpu-0": iommufd_nodes(0)}, ["/dev/vfio/devices/vfio0", "/dev/iommu"]),
    ("two devices in one claim", {"gpu-0": legacy_nodes(7), "gpu-1": legacy_nodes(9)},
     ["/dev/vfio/7", "/dev/vfio/9", "/dev/vfio/vfio"]),
    ("two iommufd devices in one claim", {"gpu-0": iommufd_nodes(0), "gpu-1": iommufd_nodes(1)},
     ["/dev/vfio/devices/vfio0", "/dev/vfio/devices/vfio1", "/dev/iommu"]),
]


@pytest.mark.parametrize(("devices", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_claim_ids_returned_to_the_kubelet_resolve(consumer: Consumer, cdi_root: Path,
                                                   devices: dict[str, list[str]], expected: list[str]) -> None:
    ids = write_claim_spec(cdi_root, CLAIM_A, devices)
    nodes = [n for ns in devices.values() for n in ns]
    spec = consumer.inject(cdi_root, devices=ids, nodes=nodes)
    assert sorted(device_paths(spec)) == sorted(expected)  # each node once, whatever the order
    for device in spec["linux"]["devices"]:
        assert device["type"] == "c"
        assert (device["major"], device["minor"]) == (os.major(NULL), os.minor(NULL))


def test_pod_annotation_resolves_to_all_the_pods_claims(consumer: Consumer, cdi_root: Path) -> None:
    """The released-Kata path: the sandbox's cdi.k8s.io/cc-gpu annotation names the per-pod device."""
    claim_ids = write_claim_spec(cdi_root, CLAIM_A, {"gpu-0": legacy_nodes(7)})
    claim_ids += write_claim_spec(cdi_root, CLAIM_B, {"gpu-0": legacy_nodes(9)})
    pod_id = write_pod_spec(cdi_root, ADMISSION_UID, [legacy_nodes(7), legacy_nodes(9)])
    nodes = legacy_nodes(7) + legacy_nodes(9)
    annotations = {"cdi.k8s.io/cc-gpu": pod_id, "io.katacontainers.config.hypervisor.default_memory": "16384"}

    sandbox = consumer.inject(cdi_root, annotations=annotations, nodes=nodes)
    assert sorted(device_paths(sandbox)) == ["/dev/vfio/7", "/dev/vfio/9", "/dev/vfio/vfio"]

    # The container's CDI ids (what the kubelet passes) resolve to the same nodes, alongside the per-pod spec.
    container = consumer.inject(cdi_root, devices=claim_ids, nodes=nodes)
    assert sorted(device_paths(container)) == sorted(device_paths(sandbox))


def test_unknown_pod_device_fails_the_sandbox(consumer: Consumer, cdi_root: Path) -> None:
    """A pod annotated at admission whose spec was never written does not start: nothing is silently dropped."""
    write_claim_spec(cdi_root, CLAIM_A, {"gpu-0": legacy_nodes(7)})
    with pytest.raises(ConsumerError, match="unresolvable CDI devices"):
        consumer.inject(cdi_root, annotations={"cdi.k8s.io/cc-gpu": f"cc-gpu.io/vfio=pod-{ADMISSION_UID}"},
                        nodes=legacy_nodes(7))


BROKEN = [
    ("a newer cdiVersion than the library knows", {"cdiVersion": "9.9.9"}, "version"),
    ("a feature above the spec's cdiVersion", {"annotations": {"a": "b"}}, "version"),
    ("an unknown field", {"deviceNodes": []}, "unknown field"),
    ("a device with no edits", {"devices": [{"name": "empty", "containerEdits": {}}]}, "empty"),
]


@pytest.mark.parametrize(("change", "message"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_one_bad_spec_fails_every_pod_on_the_node(consumer: Consumer, cdi_root: Path, change: dict[str, object],
                                                  message: str) -> None:
    """The failure mode our writer must never cause: one bad file makes the refresh, hence every pod, fail."""
    ids = write_claim_spec(cdi_root, CLAIM_A, {"gpu-0": legacy_nodes(7)})
    bad = {"cdiVersion": "0.5.0", "kind": "other.example/gpu",
           "devices": [{"name": "x", "containerEdits": {"deviceNodes": [{"path": "/dev/null"}]}}]} | change
    (cdi_root / "other.example-gpu.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConsumerError, match=message):
        consumer.inject(cdi_root, devices=ids, nodes=legacy_nodes(7))


def test_the_same_device_in_two_files_conflicts(consumer: Consumer, cdi_root: Path) -> None:
    ids = write_claim_spec(cdi_root, CLAIM_A, {"gpu-0": legacy_nodes(7)})
    copy = cdi_root / "cc-gpu.io-vfio_copy.json"
    copy.write_text((cdi_root / f"cc-gpu.io-vfio_{CLAIM_A}.json").read_text())
    with pytest.raises(ConsumerError, match="conflict"):
        consumer.inject(cdi_root, devices=ids, nodes=legacy_nodes(7))


def test_specs_match_the_cdi_json_schema(cdi_root: Path) -> None:
    write_claim_spec(cdi_root, CLAIM_A, {"gpu-0": legacy_nodes(7), "gpu-1": iommufd_nodes(1)})
    write_pod_spec(cdi_root, ADMISSION_UID, [legacy_nodes(7)])
    paths = sorted(cdi_root.iterdir())
    assert len(paths) == 2
    for path in paths:
        validate_cdi(json.loads(path.read_text()))


def test_the_schema_check_refuses_what_the_consumer_refuses(consumer: Consumer, cdi_root: Path) -> None:
    """The suite's schema validator and the Go library agree: a device without container edits is refused."""
    ids = write_claim_spec(cdi_root, CLAIM_A, {"gpu-0": legacy_nodes(7)})
    path = cdi_root / f"cc-gpu.io-vfio_{CLAIM_A}.json"
    spec = json.loads(path.read_text())
    spec["devices"][0].pop("containerEdits")
    with pytest.raises(jsonschema.ValidationError):
        validate_schema(spec)
    path.write_text(json.dumps(spec))
    with pytest.raises(ConsumerError):
        consumer.inject(cdi_root, devices=ids, nodes=legacy_nodes(7))


def test_a_token_spec_is_owner_only_and_its_env_reaches_the_oci_spec(consumer: Consumer, cdi_root: Path) -> None:
    """The attestation token's channel: the CDI env entry lands in the OCI spec's `process.env`, which the Kata
    runtime hands to its agent inside the guest (no host file is shared into a confidential guest). The spec that
    carries it is 0600, readable by the root runtimes only."""
    from cc_gpu.dra.cdi import CdiDevice, CdiWriter, device_name, qualified  # noqa: PLC0415

    env = "CC_GPU_ATTESTATION_TOKEN_0000_18_00_0=eyJhbGciOiJFUzM4NCJ9.e30.sig"
    device = CdiDevice(device_name(CLAIM_A, "gpu-0"), tuple(legacy_nodes(7)), (env,))
    path = CdiWriter(cdi_root).write_claim(CLAIM_A, [device])
    assert path.stat().st_mode & 0o777 == 0o600
    plain = write_claim_spec(cdi_root, CLAIM_B, {"gpu-0": legacy_nodes(9)})
    assert CdiWriter(cdi_root).claim_path(CLAIM_B).stat().st_mode & 0o777 == 0o644, "no secret, no need to hide"
    spec = consumer.inject(cdi_root, devices=[qualified(device.name), *plain],
                           nodes=[*legacy_nodes(7), *legacy_nodes(9)])
    assert env in spec["process"]["env"]
