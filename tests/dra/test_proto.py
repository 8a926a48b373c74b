"""The wire contracts: committed generated code is fresh, and names and numbers are the kubelet's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cc_gpu.dra.proto import dra_health_v1alpha1_pb2, dra_v1_pb2, dra_v1beta1_pb2, pluginregistration_pb2
from cc_gpu.dra.proto.generate import PROTO_DIR, generate

# Lines that carry the generator's own version; a different grpcio-tools release may write other numbers there.
_VERSION_LINE = re.compile(r"Protobuf Python Version|GRPC_GENERATED_VERSION =|_runtime_version\.\w+,|^\s*\d+,\s*$")


def _normalised(text: str) -> list[str]:
    return [line for line in text.splitlines() if not _VERSION_LINE.search(line)]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    fresh = {p.name: p for p in generate(tmp_path)}
    committed = {p.name: p for p in PROTO_DIR.iterdir() if "_pb2" in p.name}
    assert set(fresh) == set(committed), "run: python -m cc_gpu.dra.proto.generate"
    for name, path in fresh.items():
        assert _normalised(path.read_text()) == _normalised(committed[name].read_text()), (
            f"{name} is stale; run: python -m cc_gpu.dra.proto.generate"
        )


@pytest.mark.parametrize(
    ("name", "module", "full_name"),
    [
        ("registration service", pluginregistration_pb2, "pluginregistration.Registration"),
        ("DRA v1 service", dra_v1_pb2, "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin"),
        ("DRA v1beta1 service", dra_v1beta1_pb2, "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin"),
        ("health service", dra_health_v1alpha1_pb2, "v1alpha1.DRAResourceHealth"),
    ],
)
def test_service_names(name: str, module: object, full_name: str) -> None:
    services = [s.full_name for s in module.DESCRIPTOR.services_by_name.values()]  # type: ignore[attr-defined]
    assert services == [full_name], name


@pytest.mark.parametrize(
    ("name", "message", "fields"),
    [
        ("PluginInfo", pluginregistration_pb2.PluginInfo,
         {"type": 1, "name": 2, "endpoint": 3, "supported_versions": 4}),
        ("RegistrationStatus", pluginregistration_pb2.RegistrationStatus, {"plugin_registered": 1, "error": 2}),
        ("v1 Device", dra_v1_pb2.Device,
         {"request_names": 1, "pool_name": 2, "device_name": 3, "cdi_device_ids": 4, "share_id": 5}),
        ("v1beta1 Device", dra_v1beta1_pb2.Device,
         {"request_names": 1, "pool_name": 2, "device_name": 3, "cdi_device_ids": 4}),
        ("v1 Claim", dra_v1_pb2.Claim, {"namespace": 1, "uid": 2, "name": 3}),
        ("v1 NodePrepareResourceResponse", dra_v1_pb2.NodePrepareResourceResponse, {"devices": 1, "error": 2}),
        ("v1 NodeUnprepareResourceResponse", dra_v1_pb2.NodeUnprepareResourceResponse, {"error": 1}),
        ("DeviceHealth", dra_health_v1alpha1_pb2.DeviceHealth,
         {"device": 1, "health": 2, "last_updated_time": 3, "health_check_timeout_seconds": 4, "message": 5}),
        ("DeviceIdentifier", dra_health_v1alpha1_pb2.DeviceIdentifier, {"pool_name": 1, "device_name": 2}),
    ],
)
def test_field_numbers(name: str, message: type, fields: dict[str, int]) -> None:
    got = {f.name: f.number for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]
    assert got == fields, name
