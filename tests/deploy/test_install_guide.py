"""The install guide's Helm command lines, run through Helm's own engine.

Every `helm install` / `helm upgrade` line in deploy/README.md and README.md that installs `deploy/helm/cc-gpu` is
parsed as the shell would split it; its `--set` expressions go through Helm's own `--set` parser (strvals, via the
Helm library) and the chart is rendered with them, which also checks them against values.schema.json. Each line
must give the plugin DaemonSet and the pod-gate Deployment the image the guide says. A `$(cat ....digest)` stands
for the digest file `deploy/build-image.sh` writes, replaced by a well-formed digest.
"""

from __future__ import annotations

import copy
import re
import shlex
from typing import Any

import helm_python as helm
import pytest

from tests.deploy.chart import REPO, one, render

GUIDES = [REPO / "deploy" / "README.md", REPO / "README.md"]
DIGEST = "sha256:" + "d" * 64


def helm_lines() -> list[tuple[str, list[str]]]:
    """(where, argv) of every helm install/upgrade of the chart in the guides' shell blocks."""
    found = []
    for guide in GUIDES:
        for block in re.findall(r"```(?:sh|bash)\n(.*?)```", guide.read_text(), re.DOTALL):
            for raw in block.replace("\\\n", " ").splitlines():
                line = re.sub(r'"?\$\(cat [^)]*\.digest\)"?', DIGEST, raw)
                argv = shlex.split(line, comments=True)
                if argv[:1] == ["helm"] and argv[1:2] in (["install"], ["upgrade"]) and "deploy/helm/cc-gpu" in argv:
                    found.append((f"{guide.relative_to(REPO)}: {line.strip()[:80]}", argv))
    return found


LINES = helm_lines()


def _merge(into: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
    return into


def values_of(argv: list[str]) -> dict[str, Any]:
    """The values a line gives; with `--reuse-values`, on top of those of the guide's line before it (as Helm)."""
    values: dict[str, Any] = {}
    if "--reuse-values" in argv:
        where = next(i for i, (_, a) in enumerate(LINES) if a is argv)
        assert where > 0 and LINES[where - 1][0].split(":")[0] == LINES[where][0].split(":")[0], \
            "--reuse-values with no earlier install in the same guide"
        values = copy.deepcopy(values_of(LINES[where - 1][1]))
    for i, arg in enumerate(argv):
        if arg == "--set":
            _merge(values, helm.parse_set_string(argv[i + 1]))
        elif arg.startswith("--set="):
            _merge(values, helm.parse_set_string(arg.removeprefix("--set=")))
        elif arg in ("-f", "--values", "--set-string", "--set-file", "--set-json"):
            raise AssertionError(f"{arg}: extend this test to read it")
    return values


def test_the_guides_install_the_chart() -> None:
    assert len(LINES) >= 3, [where for where, _ in LINES]


@pytest.mark.parametrize("argv", [argv for _, argv in LINES], ids=[where for where, _ in LINES])
def test_each_helm_line_renders_and_points_the_workloads_at_its_image(argv: list[str]) -> None:
    assert "--namespace" in argv and argv[argv.index("--namespace") + 1] == "cc-gpu-system"
    values = values_of(argv)
    image = values["image"]
    expected = (f"{image['repository']}@{image['digest']}" if image.get("digest")
                else f"{image['repository']}:{image.get('tag') or '0.1.0'}")
    objects = render(values)
    plugin = one(objects, "DaemonSet", "kubelet-plugin")
    gate = one(objects, "Deployment", "pod-gate")
    for workload in (plugin, gate):
        assert {c["image"] for c in workload["spec"]["template"]["spec"]["containers"]} == {expected}
