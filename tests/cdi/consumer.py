"""Builds and runs the Go CDI consumers (tests/cdi/consumer) the way the tests need them.

A consumer resolves CDI names with a Go CDI library exactly as a container runtime does, so our specs are judged by the
code the runtimes run, not by our reading of the specification. There is one per library version that matters:

- `kata`: `github.com/container-orchestrated-devices/container-device-interface` v0.6.0, the version Kata's Go runtime
  resolves CDI devices with (it enforces a minimum `cdiVersion` per feature and accepts 0.1.0-0.6.0);
- `containerd`: `tags.cncf.io/container-device-interface` v1.1.0, the version containerd 2.2/2.3 vendor.

Both build from one source (`consumer/main.go`, written against the v0.6.0 import path; the containerd build rewrites
the import path, the library's API is the same) with each version's own `go.mod`/`go.sum`, dependencies from the Go
module proxy, and a current Go (`tests/gotool.py`). Binaries are cached under `$CC_GPU_CACHE/cdi-consumer/` keyed by a
hash of go.mod, go.sum, the source and the Go version.

Injection stats each device node's host path, and a test machine has no `/dev/vfio`. So the consumer runs in a
private user and mount namespace where a tmpfs replaces `/dev` and each node the specs name is a bind mount of
`/dev/null`: the specs stay exactly as the plugin writes them (host paths, no device numbers), and the injected
`linux.devices` carry /dev/null's type and numbers.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import gotool

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIR = Path(__file__).parent / "consumer"
SOURCE = SOURCE_DIR / "main.go"
SOURCE_IMPORT = "github.com/container-orchestrated-devices/container-device-interface"


class ConsumerError(Exception):
    """The consumer refused the specs or the devices (its stderr is the message)."""


@dataclass(frozen=True)
class Library:
    """One Go CDI library version: who runs it, its module path and its go.mod directory under consumer/."""

    name: str
    module: str
    version: str
    used_by: str

    @property
    def module_dir(self) -> Path:
        return SOURCE_DIR / f"{self.name}-{self.version}"


LIBRARIES = {
    "kata": Library("kata", SOURCE_IMPORT, "v0.6.0", "Kata Containers' Go runtime"),
    "containerd": Library("containerd", "tags.cncf.io/container-device-interface", "v1.1.0", "containerd 2.2/2.3"),
}


def build(library: Library) -> Path:
    """Builds the consumer for `library` unless a binary for the same inputs is cached; returns the binary."""
    files = [SOURCE, library.module_dir / "go.mod", library.module_dir / "go.sum"]
    key = gotool.input_hash(files, library.module)
    binary = gotool.cache_root() / "cdi-consumer" / f"{library.name}-{library.version}-{key}" / "cdi-consumer"
    if binary.exists():
        return binary
    with tempfile.TemporaryDirectory(prefix="cdi-consumer-") as tmp:
        work = Path(tmp)
        shutil.copy(library.module_dir / "go.mod", work / "go.mod")
        shutil.copy(library.module_dir / "go.sum", work / "go.sum")
        (work / "main.go").write_text(SOURCE.read_text().replace(SOURCE_IMPORT, library.module))
        gotool.build(work, binary)
    return binary


@dataclass(frozen=True)
class Consumer:
    binary: Path
    workdir: Path

    def inject(self, spec_dir: Path, *, devices: Iterable[str] = (), annotations: Mapping[str, str] | None = None,
               nodes: Iterable[str] = ()) -> dict[str, Any]:
        """Refreshes a registry over `spec_dir` and injects `devices` plus those in `annotations` into an empty OCI
        spec; `nodes` are the host device paths to make exist. Returns the resulting OCI spec."""
        args = [str(self.binary), "-spec-dir", str(spec_dir)]
        for device in devices:
            args += ["-device", device]
        if annotations is not None:
            path = self.workdir / "annotations.json"
            path.write_text(json.dumps(dict(annotations)))
            args += ["-annotations", str(path)]
        null_source = self.workdir / "null-source"
        null_source.touch()
        script = ["set -e", f"mount --bind /dev/null {shlex.quote(str(null_source))}", "mount -t tmpfs tmpfs /dev"]
        for node in sorted(set(nodes)):
            quoted = shlex.quote(node)
            script += [f"mkdir -p $(dirname {quoted})", f"touch {quoted}",
                       f"mount --bind {shlex.quote(str(null_source))} {quoted}"]
        script.append("exec " + shlex.join(args))
        out = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", "\n".join(script)],
                             input="{}", capture_output=True, text=True, check=False, timeout=60)
        if out.returncode != 0:
            raise ConsumerError(out.stderr.strip())
        result: dict[str, Any] = json.loads(out.stdout)
        return result


def device_paths(oci_spec: Mapping[str, Any]) -> list[str]:
    return [d["path"] for d in oci_spec.get("linux", {}).get("devices", [])]
