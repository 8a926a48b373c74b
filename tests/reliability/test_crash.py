"""Crash injection: the real plugin process is SIGKILLed at every crash point each scenario passes, then restarted.

For every (scenario, point, n-th pass) the node must converge once the kubelet retries: each device either prepared
and recorded or back on exactly its original driver, no orphan CDI spec or temp file, no checkpoint entry or host bind
record without its effects, and the retry answering as an uncrashed prepare would. See `scenarios.py`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cc_gpu import crashpoints
from tests.reliability.scenarios import SCENARIOS, Outcome, Scenario, Shared, kill_targets, run
from tests.reliability.summary import SUMMARY

REPO = Path(__file__).resolve().parents[2]
TRACES: dict[str, Outcome] = {}
KILLED: dict[str, set[str]] = {}


def _trace(shared: Shared, sc: Scenario) -> Outcome:
    if sc.name not in TRACES:
        path = shared.base / f"{sc.name}.trace"
        TRACES[sc.name] = run(shared, sc, None, path)
    return TRACES[sc.name]


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_crash_at_every_point_converges(shared: Shared, sc: Scenario) -> None:
    outcome = _trace(shared, sc)
    assert not outcome.crashed
    targets = kill_targets(sc, outcome)
    assert targets, "the scenario passes no crash point"
    failures: list[str] = []
    for target in targets:
        try:
            run(shared, sc, target, None)
        except AssertionError as e:
            failures.append(f"{target}: {e}")
    KILLED[sc.name] = set(targets)
    runs = sum(len(t) for t in KILLED.values())
    points = {t.split(":")[0] for ts in KILLED.values() for t in ts}
    SUMMARY["crash injection"] = (
        f"{len(KILLED)} scenarios, {runs} kill-and-restart runs, {len(points)} of {len(crashpoints.POINTS)} points"
    )
    assert not failures, "\n".join(failures)


def test_every_point_is_killed_by_some_scenario(shared: Shared) -> None:
    covered = {t.split(":")[0] for sc in SCENARIOS for t in kill_targets(sc, _trace(shared, sc))}
    assert covered == set(crashpoints.POINTS), f"never killed at: {sorted(set(crashpoints.POINTS) - covered)}"


def _calls() -> dict[str, list[str]]:
    """Every `crashpoint("...")` call in the package: name -> files."""
    out: dict[str, list[str]] = {}
    for path in sorted((REPO / "cc_gpu").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "crashpoint":
                arg = node.args[0]
                assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), f"{path}: non-literal point name"
                out.setdefault(arg.value, []).append(str(path.relative_to(REPO)))
    return out


def test_every_registered_point_is_called_and_every_call_registered() -> None:
    calls = _calls()
    assert set(calls) == set(crashpoints.POINTS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("", (None, 0), id="unset"),
        pytest.param("prepare-after-cdi", ("prepare-after-cdi", 1), id="first-pass"),
        pytest.param("bind-after-unbind:2", ("bind-after-unbind", 2), id="second-pass"),
    ],
)
def test_parse(value: str, expected: tuple[str | None, int]) -> None:
    assert crashpoints.parse(value) == expected


@pytest.mark.parametrize("value", ["no-such-point", "prepare-after-cdi:0", "prepare-after-cdi:x"])
def test_parse_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="CC_GPU_CRASH_AT"):
        crashpoints.parse(value)


def test_signing_key_creation_interrupted_before_its_index(tmp_path: Path) -> None:
    """Found by the crash runs: a kill between writing a node's new signing key and its index made every later start
    fail with FileExistsError. The unindexed key was never used, so the next start replaces it."""
    from datetime import timedelta  # noqa: PLC0415

    from cc_gpu.dra.keys import NodeKeyStore  # noqa: PLC0415

    NodeKeyStore(tmp_path, "node-a", timedelta(days=1)).current()
    (tmp_path / "keys.json").unlink()
    assert NodeKeyStore(tmp_path, "node-a", timedelta(days=1)).current().kid == "node-a.k1"
