"""Fixtures for the CDI consumer tests: the built Go consumer, a CDI root, and the spec writer under test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cdi.consumer import Consumer, build


@pytest.fixture(scope="session")
def consumer_binary() -> Path:
    return build()


@pytest.fixture
def consumer(consumer_binary: Path, tmp_path: Path) -> Consumer:
    work = tmp_path / "consumer"
    work.mkdir()
    return Consumer(consumer_binary, work)


@pytest.fixture
def cdi_root(tmp_path: Path) -> Path:
    root = tmp_path / "cdi"
    root.mkdir()
    return root
