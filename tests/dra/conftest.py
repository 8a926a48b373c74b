"""Fixtures for the kubelet plugin's tests: a whole simulated node (API-server double, kubelet double, plugin)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dra.harness import Node, simulated_node


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    # Unix socket paths are limited to 108 bytes: keep the tree short.
    with simulated_node(tmp_path) as n:
        yield n
