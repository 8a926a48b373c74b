"""The Kubernetes client stays off every import path that does not talk to a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("modules", "heavy"),
    [
        pytest.param("cc_gpu.kube.api, cc_gpu.kube.errors, cc_gpu.kube.client", "kubernetes", id="client-module"),
        pytest.param("cc_gpu.kube.apiserver, cc_gpu.kube.apiserver.cluster", "kubernetes", id="double"),
        pytest.param("cc_gpu.kube.apiserver", "jsonschema", id="double-schemas-lazy"),
        pytest.param("cc_gpu.cli, cc_gpu.cli.sim", "kubernetes", id="cli"),
    ],
)
def test_import_does_not_load(modules: str, heavy: str) -> None:
    code = f"import sys, {modules}; print(any(m == {heavy!r} or m.startswith({heavy!r} + '.') for m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.stdout.strip() == "False"
