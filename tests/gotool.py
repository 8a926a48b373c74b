"""The Go toolchain and cache the tests build Go programs with (the CDI consumers, Kata's configuration loader).

Go programs of the test suite are modules of their own (`go.mod` + `go.sum` in the repository, dependencies from the
Go module proxy), built with a current Go: `$CC_GPU_GO`, else `/usr/local/go/bin/go`, else `go` on the PATH, and only
if it is Go 1.22 or later (Debian 12's golang-go 1.19 cannot build them). Where none is found (a fresh Debian 12), the
pinned Go toolchain is fetched once from the Go module proxy, where Go publishes it as the module
`golang.org/toolchain`, checked against its pinned SHA-256 and unpacked into the cache. Binaries are cached under
`$CC_GPU_CACHE` (default `~/.cache/cc-gpu`) keyed by a hash of their inputs, so a warm run builds nothing.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import urllib.request
import zipfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path

MIN_GO = (1, 22)
#: The toolchain fetched where the machine has no usable Go: the module zip's SHA-256 as `go mod download` (checked
#: against the Go checksum database, h1:ZOmGe1OnfREDMIdb1Qi4G9JSuDPBLGExZMQ4nis1RXM=) fetched it.
TOOLCHAIN = "v0.0.1-go1.26.8.linux-amd64"
TOOLCHAIN_SHA256 = "30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7"


class GoToolchainError(RuntimeError):
    """No usable Go toolchain, or a build failed (the message carries the compiler's output)."""


def cache_root() -> Path:
    return Path(os.environ.get("CC_GPU_CACHE") or Path.home() / ".cache" / "cc-gpu")


def _fetched_toolchain() -> Path:
    """The pinned toolchain from the Go module proxy, unpacked under the cache (fetched once)."""
    root = cache_root() / "go-toolchain" / TOOLCHAIN
    binary = root / "bin" / "go"
    if binary.exists():
        return binary
    if platform.machine() not in ("x86_64", "AMD64"):
        raise GoToolchainError(f"no Go >= {MIN_GO[0]}.{MIN_GO[1]} and no pinned toolchain for {platform.machine()}")
    proxy = (os.environ.get("GOPROXY") or "https://proxy.golang.org").split(",")[0].split("|")[0]
    if proxy in ("direct", "off"):
        proxy = "https://proxy.golang.org"
    url = f"{proxy.rstrip('/')}/golang.org/toolchain/@v/{TOOLCHAIN}.zip"
    root.parent.mkdir(parents=True, exist_ok=True)
    archive = root.parent / f"{TOOLCHAIN}.zip.part"
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=600) as response, archive.open("wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != TOOLCHAIN_SHA256:
        archive.unlink()
        raise GoToolchainError(f"{url}: SHA-256 {digest.hexdigest()} is not the pinned {TOOLCHAIN_SHA256}")
    staging = root.with_name(root.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    prefix = f"golang.org/toolchain@{TOOLCHAIN}/"
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            if not info.filename.startswith(prefix) or info.is_dir() or ".." in info.filename.split("/"):
                continue
            target = staging / info.filename[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            target.chmod(((info.external_attr >> 16) & 0o777) or 0o644)
    archive.unlink()
    staging.rename(root)
    return binary


@cache
def go() -> str:
    candidates = [os.environ.get("CC_GPU_GO"), "/usr/local/go/bin/go", shutil.which("go"),
                  str(cache_root() / "go-toolchain" / TOOLCHAIN / "bin" / "go")]
    seen = []
    for candidate in candidates:
        if not candidate or not Path(candidate).exists():
            continue
        out = subprocess.run([candidate, "env", "GOVERSION"], capture_output=True, text=True, check=False,
                             env={**os.environ, "GOTOOLCHAIN": "local"})
        m = re.match(r"go(\d+)\.(\d+)", out.stdout.strip())
        seen.append(f"{candidate}: {out.stdout.strip() or out.stderr.strip()}")
        if m and (int(m.group(1)), int(m.group(2))) >= MIN_GO:
            return candidate
    try:
        return str(_fetched_toolchain())
    except OSError as e:
        raise GoToolchainError(
            f"no Go >= {MIN_GO[0]}.{MIN_GO[1]} found (tried {seen or 'nothing'}) and the pinned toolchain could not "
            f"be fetched ({e}); install Go at /usr/local/go or set CC_GPU_GO") from e


def version() -> str:
    return subprocess.run([go(), "env", "GOVERSION"], capture_output=True, text=True, check=True,
                          env={**os.environ, "GOTOOLCHAIN": "local"}).stdout.strip()


def input_hash(paths: Iterable[Path], *extra: str) -> str:
    """A short hash of the files (names and contents) and strings that decide a binary."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    for item in (version(), *extra):
        digest.update(item.encode() + b"\0")
    return digest.hexdigest()[:16]


def build(module_dir: Path, output: Path, *, package: str = ".", timeout: float = 1800) -> Path:
    """`go build` the module in `module_dir` into `output` (static, no cgo); raise `GoToolchainError` on failure."""
    output.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly -buildvcs=false"}
    tmp = output.with_name(output.name + ".tmp")
    proc = subprocess.run([go(), "build", "-trimpath", "-o", str(tmp), package], cwd=module_dir, env=env,
                          capture_output=True, text=True, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise GoToolchainError(f"go build in {module_dir} failed:\n{proc.stderr[-4000:]}")
    os.replace(tmp, output)
    return output
