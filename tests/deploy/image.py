"""The plugin image, built by deploy/build-image.sh once per set of inputs and run with Debian's buildah.

The archive, its SBOM and the build log are cached under ${CC_GPU_CACHE:-~/.cache/cc-gpu}/image/<inputs hash>, the hash
of every file that goes into the image (the build script and its helpers, the locks, the project's sources); a warm run
reuses them. Its revision label and SOURCE_DATE_EPOCH are those of the commit that first built these inputs.
A run imports the archive into a private buildah store (vfs driver, chroot isolation: no daemon, no registry), which
is removed afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy.chart import REPO

BUILD_SCRIPT = REPO / "deploy" / "build-image.sh"
INPUTS = [BUILD_SCRIPT, REPO / "deploy" / "requirements.txt", REPO / "pyproject.toml", REPO / "README.md"]
INPUT_DIRS = [REPO / "deploy" / "image", REPO / "cc_gpu"]


def cache_root() -> Path:
    return Path(os.environ.get("CC_GPU_CACHE") or Path.home() / ".cache" / "cc-gpu") / "image"


def inputs_hash() -> str:
    files = list(INPUTS)
    for directory in INPUT_DIRS:
        files += [p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def tools_python() -> Path:
    """The build's tool venv (cyclonedx-python-lib among them), as deploy/build-image.sh names it."""
    lock = hashlib.sha256((REPO / "deploy/image/build-requirements.txt").read_bytes()).hexdigest()[:16]
    return cache_root().parent / "image-build" / f"tools-{lock}" / "bin" / "python"


def sudo() -> list[str]:
    """debootstrap and buildah's chroot isolation need root (CI runs as root; elsewhere through sudo)."""
    return [] if os.geteuid() == 0 else ["sudo", "-n", "--preserve-env=CC_GPU_CACHE"]


@dataclass(frozen=True)
class Built:
    directory: Path
    version: str
    build_seconds: float | None  # None: taken from the cache

    @property
    def archive(self) -> Path:
        return self.directory / f"cc-gpu-{self.version}.oci.tar"

    @property
    def sbom(self) -> Path:
        return self.directory / f"cc-gpu-{self.version}.cdx.json"

    @property
    def digest(self) -> str:
        return (self.directory / f"cc-gpu-{self.version}.digest").read_text().strip()

    @property
    def log(self) -> str:
        return (self.directory / "build.log").read_text()

    def oci_blob(self, digest: str) -> Any:
        with tarfile.open(self.archive) as tar:
            member = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert member is not None
            return json.load(member)

    def config(self) -> dict[str, Any]:
        """The image configuration (OCI image spec): Entrypoint, Cmd, User, Env, Labels under "config"."""
        manifest = self.oci_blob(self.digest)
        config: dict[str, Any] = self.oci_blob(manifest["config"]["digest"])
        return config

    def layer_sizes(self) -> list[int]:
        return [layer["size"] for layer in self.oci_blob(self.digest)["layers"]]


def build(version: str) -> Built:
    """The image for the current inputs: from the cache, else built now (several minutes cold)."""
    directory = cache_root() / inputs_hash()
    built = Built(directory, version, None)
    if (directory / "complete").exists():
        return built
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    started = time.monotonic()
    with (directory / "build.log").open("w") as log:
        proc = subprocess.run([*sudo(), "nice", "-n", "10", str(BUILD_SCRIPT), "--out", str(directory)],
                              stdout=log, stderr=subprocess.STDOUT, check=False,
                              env={**os.environ, "CC_GPU_CACHE": str(cache_root().parent)})
    if proc.returncode != 0:
        raise AssertionError(f"deploy/build-image.sh failed ({proc.returncode}):\n{built.log[-4000:]}")
    seconds = time.monotonic() - started
    (directory / "complete").write_text(f"{seconds:.0f}\n")
    return Built(directory, version, seconds)


class Container:
    """A working container of the image in a private buildah store."""

    def __init__(self, store: Path, archive: Path) -> None:
        self.store = store
        self.buildah = [*sudo(), "buildah", "--root", str(store / "root"), "--runroot", str(store / "run"),
                        "--storage-driver", "vfs"]
        self.name = self._buildah("from", "--quiet", "--pull-never", f"oci-archive:{archive}").strip()
        self.mount = Path(self._buildah("mount", self.name).strip())

    def _buildah(self, *args: str) -> str:
        proc = subprocess.run([*self.buildah, *args], capture_output=True, text=True, check=False,
                              env={**os.environ, "BUILDAH_ISOLATION": "chroot", "STORAGE_DRIVER": "vfs"})
        assert proc.returncode == 0, f"buildah {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def run_argv(self, argv: list[str], *, user: str | None = None, env: dict[str, str] | None = None,
                 volumes: list[str] = ()) -> list[str]:  # type: ignore[assignment]
        options = ["--isolation", "chroot", "--network", "host"]
        if user is not None:
            options += ["--user", user]
        for key, value in (env or {}).items():
            options += ["--env", f"{key}={value}"]
        for volume in volumes:
            options += ["--volume", volume]
        return [*self.buildah, "run", *options, self.name, "--", *argv]

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.run_argv(argv, **kwargs), capture_output=True, text=True, check=False,
                              timeout=600)

    def close(self) -> None:
        with contextlib.suppress(AssertionError):
            self._buildah("umount", self.name)
        with contextlib.suppress(AssertionError):
            self._buildah("rm", self.name)
        subprocess.run([*sudo(), "rm", "-rf", str(self.store)], check=False)


@contextlib.contextmanager
def container(store: Path, archive: Path) -> Iterator[Container]:
    c = Container(store, archive)
    try:
        yield c
    finally:
        c.close()
