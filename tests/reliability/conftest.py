"""Fixtures for the reliability suite: one API-server double shared by every crash run, and a summary of the counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.client import KubernetesApi
from tests.reliability.scenarios import Shared
from tests.reliability.summary import SUMMARY


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    base = Path(tmp_path_factory.mktemp("crash", numbered=True))
    with ApiServerDouble() as server:
        api = KubernetesApi(server.write_kubeconfig(base / "kubeconfig"))
        try:
            yield Shared(server, api, base)
        finally:
            api.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SUMMARY:
        terminalreporter.section("reliability")
        for key, value in SUMMARY.items():
            terminalreporter.write_line(f"{key}: {value}")
