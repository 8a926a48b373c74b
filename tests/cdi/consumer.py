"""Builds and runs the Go CDI consumer (tests/cdi/consumer) the way the tests need it.

The consumer resolves CDI names with the Go CDI library packaged by Debian, so our specs are judged by the code
container runtimes run, not by our reading of the specification. The binary is built once into `.cache/` (Debian's
Go toolchain and library, no network) and rebuilt when its source changes.

Injection stats each device node's host path, and a test machine has no `/dev/vfio`. So the consumer runs in a
private user and mount namespace where a tmpfs replaces `/dev` and each node the specs name is a bind mount of
`/dev/null`: the specs stay exactly as the plugin writes them (host paths, no device numbers), and the injected
`linux.devices` carry /dev/null's type and numbers.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cdi.schema import GOPATH

REPO = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).parent / "consumer" / "main.go"
CACHE = REPO / ".cache" / "cdi-consumer"


class ConsumerError(Exception):
    """The consumer refused the specs or the devices (its stderr is the message)."""


def build() -> Path:
    """Builds the consumer if it is missing or older than its source; returns the binary."""
    binary = CACHE / "cdi-consumer"
    if binary.exists() and binary.stat().st_mtime >= SOURCE.stat().st_mtime:
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOPATH=GOPATH, GO111MODULE="off", GOCACHE=str(CACHE / "go-build"), CGO_ENABLED="0")
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=SOURCE.parent, env=env, check=True,
                   capture_output=True, text=True)
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
