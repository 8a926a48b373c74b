"""The shared API cases (`tests/kube/cases.py`) on the double; the real server runs them in tests/cluster/."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kube import cases
from tests.kube.conftest import Http


class DoubleTarget:
    def __init__(self, http: Http) -> None:
        self.http = http

    def __call__(self, method: str, path: str, body: Any = None, *, content_type: str = "application/json") -> Any:
        return self.http(method, path, body, content_type)


@pytest.mark.parametrize("name", sorted(cases.CASES))
def test_case_runs_on_the_double(raw: Http, name: str) -> None:
    target = DoubleTarget(raw)
    cases.prepare_namespace(target, "case")
    observed = cases.CASES[name](target, "case")
    assert observed
    assert all(o["code"] < 500 for o in observed), observed
