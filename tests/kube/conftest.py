"""Shared fixtures: a running API-server double, the production client pointed at it, raw HTTP, a seeded cluster."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.apiserver import cluster as c
from cc_gpu.kube.client import KubernetesApi

DRIVER = "gpu.cc.example.com"
NODE = "node-a"


@dataclass
class Reply:
    code: int
    body: Any


class Http:
    """Plain HTTP+JSON to the double, without any Kubernetes client in between."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def __call__(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            headers = {"Content-Type": content_type} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return Reply(response.status, json.loads(raw) if raw else None)
        finally:
            conn.close()


@pytest.fixture
def double() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as server:
        yield server


@pytest.fixture
def kubeconfig(double: ApiServerDouble, tmp_path: Path) -> Path:
    return double.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def api(kubeconfig: Path) -> Iterator[KubernetesApi]:
    client = KubernetesApi(kubeconfig)
    yield client
    client.close()


@pytest.fixture
def raw(double: ApiServerDouble) -> Http:
    return Http(double.url)


def slice_body(name: str = "node-a-gpu", devices: int = 1, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name},
        "spec": {
            "driver": DRIVER,
            "pool": {"name": NODE, "generation": 1, "resourceSliceCount": 1},
            "nodeName": NODE,
            "devices": [
                {
                    "name": f"gpu-{i}",
                    "attributes": {"type": {"string": "gpu"}, "driverVersion": {"version": "1.0.0"}},
                    "capacity": {"memory": {"value": "80Gi"}},
                }
                for i in range(devices)
            ],
        },
    }
    body["spec"].update(spec)
    return body


@dataclass
class Seeded:
    """A node with one confidential pod and one plain pod sharing an allocated claim's namespace."""

    claim: dict[str, Any]
    kata_pod: dict[str, Any]
    runc_pod: dict[str, Any]


@pytest.fixture
def seeded(double: ApiServerDouble) -> Seeded:
    double.create(c.node(NODE))
    double.create(c.runtime_class("kata-snp", "kata-qemu-nvidia-gpu-snp"))
    double.create(c.device_class("vfio-gpu", DRIVER, {"apiVersion": "cc.example.com/v1", "kind": "GpuConfig"}))
    claim = double.create(c.resource_claim("default", "gpu-claim", device_class_name="vfio-gpu"))
    kata = double.create(c.pod("default", "vm", node_name=NODE, runtime_class_name="kata-snp", claims=["gpu-claim"]))
    runc = double.create(c.pod("default", "plain", node_name=NODE, runtime_class_name=None))
    allocated = c.allocate(double.store, claim, [c.Allocated("gpu", DRIVER, NODE, "gpu-0")], [kata], node_name=NODE)
    return Seeded(allocated, kata, runc)
