"""The example manifests an admin applies: valid for Kubernetes 1.37 (tests/cluster/test_examples.py applies them to
the real API server under the chart's policies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from tests.deploy.chart import REPO

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


def test_template_uses_a_cc_gpu_class_in_a_labelled_namespace() -> None:
    template = load("10-attested-gpu-claim-template.yaml")
    namespace = load("00-namespace.yaml")
    assert template["metadata"]["namespace"] == namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"] == {"cc-gpu.io/gpu-tenant": "true"}
