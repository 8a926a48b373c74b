"""The API-server double against the real kube-apiserver: the same API cases, the same observations.

Each case of `tests/kube/cases.py` runs in a fresh namespace on both servers (with an identity the real server
allows everything); the HTTP codes, `Status` reasons, the fields named in their causes and the objects read back
(without uids, resourceVersions, timestamps and managedFields) must be equal. A difference is a bug in the double:
fix it there, or make the double refuse that request clearly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from cc_gpu.kube.apiserver import ApiServerDouble
from tests.kube import cases
from tests.kube.conftest import Http

from .controlplane import ControlPlane

pytestmark = pytest.mark.cluster


class DoubleTarget:
    def __init__(self, http: Http) -> None:
        self.http = http

    def __call__(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json") -> Any:
        return self.http(method, path, body, content_type)


@pytest.fixture(scope="module")
def double() -> Iterator[DoubleTarget]:
    with ApiServerDouble() as server:
        yield DoubleTarget(Http(server.url))


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_double_answers_like_the_real_server(control_plane: ControlPlane, double: DoubleTarget, name: str) -> None:
    namespace = f"diff-{name}"[:63]
    observed = {}
    for server, target in (("real", control_plane.admin), ("double", double)):
        cases.prepare_namespace(target, namespace)
        observed[server] = cases.CASES[name](target, namespace)
    real, fake = observed["real"], observed["double"]
    assert fake == real, (
        f"the double differs from kube-apiserver in case {name}:\nreal:   {json.dumps(real, sort_keys=True)}\n"
        f"double: {json.dumps(fake, sort_keys=True)}"
    )
