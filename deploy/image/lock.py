"""Adds sha256 hashes to an exactly pinned requirements file, for `pip install --require-hashes`.

Run with Debian 12's python3 on x86_64 (the image's interpreter and platform), from the repository root:
    python3 deploy/image/lock.py deploy/requirements.txt deploy/image/build-requirements.txt
Each pin keeps its comment lines; its hashes are those of the wheels pip selects on this platform (the wheel the image
installs) plus the manylinux2014 variant where one exists, so a newer or older pip picking the other tag still
verifies. Only wheels: nothing is compiled when the image is built.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
PLATFORMS = ["--platform", "manylinux2014_x86_64", "--implementation", "cp", "--python-version", "3.11",
             "--abi", "cp311", "--abi", "abi3", "--abi", "none"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_project(filename: str) -> str:
    return normalise(filename.split("-", 1)[0])


def lock(path: Path) -> None:
    lines = path.read_text().splitlines()
    pins = [line.split("\\")[0].strip() for line in lines if PIN.match(line)]
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp) / "pins.txt"
        reqs.write_text("\n".join(pins) + "\n")
        for extra in ([], PLATFORMS):
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            "--dest", tmp, "--requirement", str(reqs), *extra], check=True)
        hashes: dict[str, list[str]] = {}
        for wheel in sorted(Path(tmp).glob("*.whl")):
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            hashes.setdefault(wheel_project(wheel.name), []).append(digest)
    out: list[str] = []
    for line in lines:
        match = PIN.match(line)
        if match:
            found = sorted(set(hashes[normalise(match.group(1))]))
            out.append(" \\\n".join([line.split("\\")[0].strip(), *(f"    --hash=sha256:{h}" for h in found)]))
        elif not line.startswith("    --hash="):
            out.append(line)
    path.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        lock(Path(name))
