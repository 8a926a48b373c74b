"""NVIDIA's published attestation test vectors, fetched once and cached, for the tests and the benchmark alike.

The real evidence, RIMs and root certificates come from NVIDIA's public `nv-local-gpu-verifier` wheels, downloaded with
pip (the package registry is the only source) into `$CC_GPU_CACHE` (default `~/.cache/cc-gpu`, the same cache the
kernel tests use) and reused on later runs. Only data files are extracted; NVIDIA's code is never imported here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path


def cache_dir() -> Path:
    base = Path(os.environ.get("CC_GPU_CACHE") or Path.home() / ".cache" / "cc-gpu")
    base.mkdir(parents=True, exist_ok=True)
    return base


def nvidia_wheel(version: str) -> Path:
    """The published `nv-local-gpu-verifier==<version>` wheel, downloaded on first use."""
    wheels = cache_dir() / "wheels"
    path = wheels / f"nv_local_gpu_verifier-{version}-py3-none-any.whl"
    if not path.exists():
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             f"nv-local-gpu-verifier=={version}", "-d", str(wheels)],
            check=True,
        )
    return path


def nvidia_files(version: str) -> Path:
    """`<cache>/nv-local-gpu-verifier-<version>/verifier`, holding `samples/` and `certs/` from the published wheel."""
    target = cache_dir() / f"nv-local-gpu-verifier-{version}"
    marker = target / ".complete"
    if not marker.exists():
        with zipfile.ZipFile(nvidia_wheel(version)) as wheel:
            for member in wheel.namelist():
                if member.startswith(("verifier/samples/", "verifier/certs/")) and not member.endswith(".py"):
                    wheel.extract(member, target)
        marker.write_text("ok\n")
    return target / "verifier"


def nvidia_venv(name: str, requirement: str) -> Path:
    """The Python of a virtualenv `<cache>/<name>` holding `requirement` (a pinned spec or a wheel path), built once.

    NVIDIA's packages pin their own dependencies (conflicting with ours), so each runs in a virtualenv of its own,
    as a subprocess; the name carries the version, so a new version gets a new virtualenv.
    """
    venv = cache_dir() / name
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", requirement], check=True)
        (venv / ".complete").write_text("ok\n")
    return python


def nvidia_sdk_python(version: str) -> Path:
    """The Python of a virtualenv holding NVIDIA's attestation SDK `nv-attestation-sdk==<version>` from PyPI."""
    return nvidia_venv(f"nv-attestation-sdk-{version}", f"nv-attestation-sdk=={version}")
