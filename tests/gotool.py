"""The Go toolchain and cache the tests build Go programs with (the CDI consumers, Kata's configuration loader).

Go programs of the test suite are modules of their own (`go.mod` + `go.sum` in the repository, dependencies from the
Go module proxy), built with a current Go: `$CC_GPU_GO`, else `/usr/local/go/bin/go`, else `go` on the PATH, and only
if it is Go 1.22 or later (Debian 12's golang-go 1.19 cannot build them). A missing toolchain is an error naming what
to install, never a skip. Binaries are cached under `$CC_GPU_CACHE` (default `~/.cache/cc-gpu`) keyed by a hash of
their inputs, so a warm run builds nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from functools import cache
from pathlib import Path

MIN_GO = (1, 22)


class GoToolchainError(RuntimeError):
    """No usable Go toolchain, or a build failed (the message carries the compiler's output)."""


def cache_root() -> Path:
    return Path(os.environ.get("CC_GPU_CACHE") or Path.home() / ".cache" / "cc-gpu")


@cache
def go() -> str:
    candidates = [os.environ.get("CC_GPU_GO"), "/usr/local/go/bin/go", shutil.which("go")]
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
    raise GoToolchainError(f"no Go >= {MIN_GO[0]}.{MIN_GO[1]} found (tried {seen or 'nothing'}); install Go at "
                           "/usr/local/go or point CC_GPU_GO at one")


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
