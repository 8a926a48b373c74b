"""Fixtures for the CDI consumer tests: the built Go consumers, a CDI root, and the spec writer under test.

`consumer` is parametrised over the CDI library versions the runtimes use (Kata's v0.6.0, containerd's v1.1.0), so
every consumer test runs against both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cdi.consumer import LIBRARIES, Consumer, build


@pytest.fixture(scope="session", params=sorted(LIBRARIES))
def consumer_binary(request: pytest.FixtureRequest) -> Path:
    return build(LIBRARIES[request.param])


@pytest.fixture
def consumer(consumer_binary: Path, tmp_path: Path) -> Consumer:
    work = tmp_path / "consumer"
    work.mkdir()
    return Consumer(consumer_binary, work)


@pytest.fixture(scope="session")
def kata_shim_binary() -> Path:
    """Kata's own `config.WithCDI` (the call the shim makes on the sandbox annotations), built from Kata's module."""
    from tests.kata import oracle  # noqa: PLC0415

    return oracle.build()


@pytest.fixture
def kata_shim(kata_shim_binary: Path, tmp_path: Path) -> Consumer:
    work = tmp_path / "kata-shim"
    work.mkdir()
    return Consumer(kata_shim_binary, work)


@pytest.fixture
def cdi_root(tmp_path: Path) -> Path:
    root = tmp_path / "cdi"
    root.mkdir()
    return root
