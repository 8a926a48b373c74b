"""The real-cluster tier: one real control plane (tests/cluster/controlplane.py) shared by the whole test session.

This tier never skips: a machine that cannot build or start the control plane fails these tests with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from . import chart
from .build import BuildError
from .controlplane import ClusterError, ControlPlane

NODE = "node-a"
SESSION_VALUES = {"runtimeClasses": {"create": True}}


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    try:
        plane = ControlPlane.start(tmp_path_factory.mktemp("cluster"))
    except (BuildError, ClusterError) as e:
        pytest.fail(f"REAL CONTROL PLANE CANNOT RUN ON THIS MACHINE: {e}", pytrace=False)
    try:
        plane.create_node(NODE)
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def chart_release(control_plane: ControlPlane) -> Iterator[list[dict[str, Any]]]:
    """The chart installed once for the session (its RuntimeClasses too, as on a cluster without kata-deploy's)."""
    objects = chart.install(control_plane, values=SESSION_VALUES)
    yield objects
    chart.uninstall(control_plane)
