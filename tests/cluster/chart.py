"""Installs the cc-gpu chart into the real control plane with the real Helm engine (helm-python-sdk, Helm 4's Go
library), as `helm install` would, and reads back what the server stored."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

from .controlplane import ControlPlane, object_path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "cc-gpu"
RELEASE = "cc-gpu"
NAMESPACE = "cc-gpu-system"
SERVICE_ACCOUNT = "cc-gpu-kubelet-plugin"
TENANT_LABEL = "cc-gpu.io/gpu-tenant"


def install(plane: ControlPlane, *, release: str = RELEASE, namespace: str = NAMESPACE,
            values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`helm install` of the chart; returns the objects of the release's manifest."""
    with helm.Config(kubeconfig_path=str(plane.admin_kubeconfig), namespace=namespace) as config:
        result = config.install(str(CHART), release, values, namespace=namespace, create_namespace=True, timeout=120)
    return [doc for doc in yaml.safe_load_all(result["manifest"]) if doc]


def uninstall(plane: ControlPlane, *, release: str = RELEASE, namespace: str = NAMESPACE) -> None:
    with helm.Config(kubeconfig_path=str(plane.admin_kubeconfig), namespace=namespace) as config:
        config.uninstall(release, timeout=120)


@contextmanager
def installed(plane: ControlPlane, **kwargs: Any) -> Iterator[list[dict[str, Any]]]:
    objects = install(plane, **kwargs)
    try:
        yield objects
    finally:
        uninstall(plane, **{k: v for k, v in kwargs.items() if k in ("release", "namespace")})


def stored(plane: ControlPlane, obj: dict[str, Any], namespace: str) -> Any:
    """The object as the server stores it (the release namespace filled in where the manifest leaves it out)."""
    metadata = obj["metadata"]
    located = {**obj, "metadata": {**metadata, "namespace": metadata.get("namespace", namespace)}}
    return plane.admin("GET", object_path(located))


def upgrade(plane: ControlPlane, *, release: str = RELEASE, namespace: str = NAMESPACE,
            values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`helm upgrade` of the release to the chart with `values`; returns the objects of the new manifest."""
    with helm.Config(kubeconfig_path=str(plane.admin_kubeconfig), namespace=namespace) as config:
        result = config.upgrade(str(CHART), release, values, namespace=namespace, timeout=120)
    return [doc for doc in yaml.safe_load_all(result["manifest"]) if doc]
