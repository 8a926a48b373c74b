"""The README's copy-paste attestation example, run line for line as a user would paste it.

The shell block after `<!-- readme-example: nvidia-sample -->` in README.md is extracted and run by bash with
`set -e` in an empty directory, with this virtualenv's `cc-gpu`, `pip` and `python3` first on the PATH. Its `pip
download` is answered from the wheel cache the other attestation tests fill (`tests/nvidia_vectors.py`), through
pip's own `PIP_FIND_LINKS`/`PIP_NO_INDEX` settings, so the command line stays exactly the README's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.nvidia_vectors import nvidia_wheel

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- readme-example: nvidia-sample -->"


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(re.escape(marker) + r"\n```sh\n(.*?)\n```", text, re.DOTALL)
    assert m, f"README.md has no ```sh block after {marker}"
    return m.group(1)


def test_the_readme_verifies_nvidias_sample_and_its_token_checks(tmp_path: Path) -> None:
    wheel = nvidia_wheel("2.1.1")
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "PIP_FIND_LINKS": str(wheel.parent), "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    script = "set -e\n" + readme_block(MARKER)
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "\nACCEPTED\n" in proc.stdout, proc.stdout  # the first verify, in text
    assert '"result": "ACCEPTED"' in proc.stdout  # the second, as JSON
    assert "token valid and bound to node node-a" in proc.stderr, proc.stderr
    claims = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1:])
    assert claims["x-cc-gpu-node"] == "node-a" and claims["measres"] == "success"
    assert "None" not in proc.stdout + proc.stderr
