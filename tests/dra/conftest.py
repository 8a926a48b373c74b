"""Fixtures for the kubelet plugin's tests: a whole simulated node (API-server double, kubelet double, plugin)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cc_gpu.dra.kubelet import KubeletDouble
from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.client import KubernetesApi
from tests.dra.harness import Node


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    # Unix socket paths are limited to 108 bytes: keep the tree short.
    with ApiServerDouble() as server:
        api = KubernetesApi(server.write_kubeconfig(tmp_path / "kubeconfig"))
        kubelet = KubeletDouble(tmp_path / "registry")
        kubelet.start()
        n = Node(tmp_path, server, api, kubelet)
        n.seed()
        try:
            yield n
        finally:
            if n.proc is not None and n.proc.poll() is None:
                n.proc.kill()
                n.proc.wait()
            kubelet.stop()
            api.close()
