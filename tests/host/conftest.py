"""Fixtures for the host-layer tests: a fresh simulated node per test, on disk under tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cc_gpu.host.binder import Binder, BindPolicy
from cc_gpu.host.host import Host
from cc_gpu.host.pci import read_driver
from cc_gpu.host.sim import SimKernel, create_sim_host, sim_kernel

SimFactory = Callable[[str], tuple[Host, SimKernel]]

# Short waits keep failure-path tests fast; the binder's logic does not depend on the values.
FAST = BindPolicy(bind_timeout=0.5, in_use_timeout=0.3, lock_timeout=0.5, poll_interval=0.01)


@pytest.fixture
def sim(tmp_path: Path) -> SimFactory:
    def make(topology: str) -> tuple[Host, SimKernel]:
        host = create_sim_host(topology, tmp_path / topology)
        return host, sim_kernel(host)

    return make


def binder(host: Host, **policy: object) -> Binder:
    fields = {**FAST.__dict__, **policy}
    return Binder(host, BindPolicy(**fields))  # type: ignore[arg-type]


def drivers(host: Host, *bdfs: str) -> list[str | None]:
    return [read_driver(host.io, host.roots, b) for b in bdfs]
