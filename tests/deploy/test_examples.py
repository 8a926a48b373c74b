"""The example manifests an admin applies: valid for Kubernetes 1.37 and admitted by the chart's policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from tests.deploy.cel import Review
from tests.deploy.chart import REPO
from tests.deploy.test_admission_cel import GUARD, MUTATING, TENANTS

EXAMPLES = REPO / "deploy" / "examples"


def load(name: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    return doc


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def test_examples_are_valid_for_kubernetes_1_37() -> None:
    assert len(example_files()) == 3
    for path in example_files():
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_pod_gets_its_cdi_device_and_passes_the_guard() -> None:
    pod = load("20-confidential-pod.yaml")
    uid = "1e6a0c55-0f3e-4d8e-b1a4-7c9e2d3f4a5b"
    mutated = MUTATING.mutate(Review("CREATE", pod, uid=uid))
    assert mutated["metadata"]["annotations"] == {"cdi.k8s.io/cc-gpu": f"cc-gpu.io/vfio=pod-{uid}"}
    assert GUARD.denials(Review("CREATE", mutated, uid=uid)) == []


def test_template_uses_a_cc_gpu_class_in_a_labelled_namespace() -> None:
    template = load("10-attested-gpu-claim-template.yaml")
    namespace = load("00-namespace.yaml")
    assert template["metadata"]["namespace"] == namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"] == {"cc-gpu.io/gpu-tenant": "true"}
    # The tenant policy's binding skips labelled namespaces; elsewhere the same template is refused.
    assert TENANTS.denials(Review("CREATE", template, namespace="default"))
