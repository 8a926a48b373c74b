"""Builds the real Kubernetes control plane (kube-apiserver, kube-scheduler, kube-controller-manager, etcd) from
their Go modules, once per machine.

`tests/cluster/go/` is a Go module of the project's own: its go.mod requires `k8s.io/kubernetes` at one pinned
release (with the `replace` lines its staging modules need) and the etcd server version that release itself
requires, and `cmd/etcd` is etcd's own entry point. No upstream source is committed; the Go module proxy serves it.
The binaries are stamped with the real version (`/version` says 1.37.x, so Helm's `kubeVersion` check works) and
cached under `${CC_GPU_CACHE:-~/.cache/cc-gpu}/cluster/<hash>`, the hash covering the module files, the build flags
and the Go version, so a machine builds them once. `python -m tests.cluster.build` builds and prints the directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MODULE = Path(__file__).resolve().parent / "go"
COMMANDS = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "etcd": "./cmd/etcd",
}
# The machine's Go comes first: Debian's golang-go (1.19) is far older than the module needs.
GO_CANDIDATES = (Path("/usr/local/go/bin/go"),)
BUILD_TIMEOUT_S = 75 * 60


class BuildError(Exception):
    """The control plane cannot be built on this machine (the message says why)."""


@dataclass(frozen=True)
class Binaries:
    directory: Path
    kubernetes_version: str
    etcd_version: str

    def path(self, command: str) -> Path:
        return self.directory / command


def cache_root() -> Path:
    return Path(os.environ.get("CC_GPU_CACHE", Path.home() / ".cache" / "cc-gpu")) / "cluster"


def pinned_version(module: str) -> str:
    """The version go.mod requires for `module` (e.g. `k8s.io/kubernetes` -> `v1.37.2`)."""
    match = re.search(rf"^\s*{re.escape(module)} (v\S+)", (MODULE / "go.mod").read_text(), re.MULTILINE)
    if match is None:
        raise BuildError(f"{MODULE / 'go.mod'} does not require {module}")
    return match.group(1)


def go_binary() -> Path:
    """The Go toolchain to build with: the machine's own, checked against the go.mod's `go` line."""
    found = [p for p in GO_CANDIDATES if p.exists()]
    which = shutil.which("go")
    if which:
        found.append(Path(which))
    if not found:
        raise BuildError("no Go toolchain: install Go 1.26 or newer at /usr/local/go (or on PATH)")
    need = _version_tuple(re.search(r"^go (\S+)", (MODULE / "go.mod").read_text(), re.MULTILINE).group(1))  # type: ignore[union-attr]
    for go in found:
        have = _go_version(go)
        if have >= need:
            return go
    raise BuildError(f"the Go toolchains found ({', '.join(f'{g}: {_go_version(g)}' for g in found)}) are older "
                     f"than the {'.'.join(map(str, need))} that {MODULE / 'go.mod'} needs")


def ldflags() -> str:
    version = pinned_version("k8s.io/kubernetes")
    major, minor = version.lstrip("v").split(".")[:2]
    base = "k8s.io/component-base/version"
    return " ".join([
        "-s", "-w",
        f"-X {base}.gitVersion={version}", f"-X {base}.gitMajor={major}", f"-X {base}.gitMinor={minor}",
        f"-X {base}.gitTreeState=clean", f"-X {base}.buildDate=1970-01-01T00:00:00Z",
    ])


def input_hash(go: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in MODULE.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(MODULE)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(ldflags().encode())
    digest.update(".".join(map(str, _go_version(go))).encode())
    return digest.hexdigest()[:16]


def build(*, log: bool = True) -> Binaries:
    """The cached binaries, built first if this machine has none for the current inputs."""
    go = go_binary()
    target = cache_root() / input_hash(go)
    binaries = Binaries(target, pinned_version("k8s.io/kubernetes"), pinned_version("go.etcd.io/etcd/server/v3"))
    if _complete(target):
        return binaries
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / ".build.lock"):
        if _complete(target):
            return binaries
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        env = dict(os.environ, GOFLAGS="-mod=readonly", GOTOOLCHAIN="local")
        command = [str(go), "build", "-trimpath", "-ldflags", ldflags(), "-o", str(staging) + "/", *COMMANDS.values()]
        started = time.monotonic()
        if log:
            print(f"building the Kubernetes {binaries.kubernetes_version} control plane with {go} "
                  f"(once per machine; cached in {target})", file=sys.stderr, flush=True)
        try:
            result = subprocess.run(command, cwd=MODULE, env=env, capture_output=True, text=True,
                                    timeout=BUILD_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as e:
            raise BuildError(f"the Go build did not finish in {BUILD_TIMEOUT_S} s") from e
        if result.returncode != 0:
            raise BuildError(f"`{' '.join(command)}` failed:\n{result.stderr[-4000:]}")
        missing = [name for name in COMMANDS if not (staging / name).exists()]
        if missing:
            raise BuildError(f"the Go build did not produce {missing}")
        (staging / "BUILT").write_text(f"{time.monotonic() - started:.0f} s\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        if log:
            print(f"built in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return binaries


def _complete(target: Path) -> bool:
    return (target / "BUILT").exists() and all((target / name).exists() for name in COMMANDS)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _go_version(go: Path) -> tuple[int, ...]:
    out = subprocess.run([str(go), "env", "GOVERSION"], capture_output=True, text=True, check=False,
                         env=dict(os.environ, GOTOOLCHAIN="local")).stdout.strip()
    return _version_tuple(out.removeprefix("go")) if out else (0,)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


if __name__ == "__main__":
    try:
        print(build().directory)
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
