"""Kata's own configuration loader as the oracle for `cc-gpu kata check` (tests/kata/oracle).

`tests/kata/oracle/main.go` calls `katautils.LoadConfiguration`, the function the shim calls, and prints what Kata
decided. It is built from Kata's Go module at the pinned pseudo-version in its `go.mod` (Kata's tags are not Go module
versions): the build copies that module out of the Go module cache into the build directory, generates
`pkg/katautils/config-settings.go` from `config-settings.go.in` there (as Kata's Makefile does), and the `replace` in
`go.mod` points at that copy. Nothing of Kata is committed. The binary is cached under `$CC_GPU_CACHE/kata-oracle/`
by a hash of go.mod, go.sum and main.go.

Kata's loader checks that the files a configuration names (QEMU, kernel, image, firmware) exist, so each run happens
in a private user and mount namespace where a tmpfs covers the first missing directory's parent of each such path and
an empty stub stands at the path; nothing outside the namespace changes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from tests import gotool

SOURCE_DIR = Path(__file__).parent / "oracle"
MODULE = "github.com/kata-containers/kata-containers/src/runtime"
#: config-settings.go.in placeholders, filled as Kata's Makefile would for a kata-deploy build.
SETTINGS = {
    "RUNTIME_NAME": "containerd-shim-kata-v2", "PROJECT_NAME": "Kata Containers", "PROJECT_TYPE": "kata",
    "PROJECT_URL": "https://github.com/kata-containers", "PROJECT_ORG": "kata-containers", "PKGRUNDIR": "/run/vc",
    "COMMIT": "oracle", "VERSION": "oracle",
    "CONFIG_PATH": "/opt/kata/share/defaults/kata-containers/configuration.toml",
    "SYSCONFIG": "/etc/kata-containers/configuration.toml",
}
#: Keys of `[hypervisor.*]` whose value is a host file the loader checks.
FILE_KEYS = ("path", "kernel", "image", "initrd", "firmware", "firmware_volume", "jailer_path", "virtio_fs_daemon")
#: What the loader falls back to when a configuration names no kernel or image (config-settings.go.in's defaults).
#: Host device nodes the loader checks for (vsock for the agent); stubs in the namespace's own /dev.
HOST_FILES = ("/dev/vhost-vsock",)
DEFAULT_FILES = {"kernel": "/usr/share/kata-containers/vmlinuz.container",
                 "image": "/usr/share/kata-containers/kata-containers.img"}


def pinned_version() -> str:
    m = re.search(rf"^require {re.escape(MODULE)} (\S+)$", (SOURCE_DIR / "go.mod").read_text(), re.MULTILINE)
    assert m is not None, "the oracle's go.mod pins no Kata version"
    return m.group(1)


def build() -> Path:
    """The oracle binary, built unless cached for the same go.mod, go.sum, source and Go version."""
    files = [SOURCE_DIR / "go.mod", SOURCE_DIR / "go.sum", SOURCE_DIR / "main.go"]
    binary = gotool.cache_root() / "kata-oracle" / gotool.input_hash(files) / "kata-oracle"
    if binary.exists():
        return binary
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    out = subprocess.run([gotool.go(), "mod", "download", "-json", f"{MODULE}@{pinned_version()}"], cwd="/",
                         capture_output=True, text=True, check=False, env=env, timeout=1800)
    if out.returncode != 0:
        raise gotool.GoToolchainError(f"cannot download Kata's runtime module: {out.stdout[-2000:]}{out.stderr}")
    module_dir = Path(json.loads(out.stdout)["Dir"])
    with tempfile.TemporaryDirectory(prefix="kata-oracle-") as tmp:
        work = Path(tmp)
        for f in files:
            shutil.copy(f, work / f.name)
        copy = work / "kata-runtime"
        shutil.copytree(module_dir, copy, copy_function=shutil.copyfile)
        for directory, _, names in os.walk(copy):
            os.chmod(directory, 0o755)
            for name in names:
                os.chmod(os.path.join(directory, name), 0o644)
        template = (copy / "pkg/katautils/config-settings.go.in").read_text()
        for key, value in SETTINGS.items():
            template = template.replace(f"@{key}@", value)
        leftover = re.findall(r"@[A-Z_]+@", template)
        assert not leftover, f"config-settings.go.in has placeholders the build does not fill: {leftover}"
        (copy / "pkg/katautils/config-settings.go").write_text(template)
        gotool.build(work, binary)
    return binary


def stub_paths(config: Mapping[str, Any]) -> list[str]:
    """The host files a merged configuration names that the loader checks exist."""
    paths: list[str] = []
    for table in (config.get("hypervisor") or {}).values():
        if isinstance(table, Mapping):
            paths += [v for k, v in table.items() if k in FILE_KEYS and isinstance(v, str) and v.startswith("/")]
            if "kernel" not in table:
                paths.append(DEFAULT_FILES["kernel"])
            if "image" not in table and "initrd" not in table:
                paths.append(DEFAULT_FILES["image"])
    return sorted({*paths, *HOST_FILES})


def _mount_points(paths: list[str]) -> list[str]:
    """For each path, the parent of its first missing ancestor: a tmpfs there lets the stub be created."""
    points: set[str] = set()
    for path in paths:
        p = PurePosixPath(path)
        ancestors = [*[*reversed(p.parents)][1:], p]
        missing = next((a for a in ancestors if not Path(a).exists()), None)
        if missing is not None:
            points.add(str(missing.parent))
    kept = sorted(points, key=lambda s: s.count("/"))
    return [m for i, m in enumerate(kept) if not any(PurePosixPath(m).is_relative_to(o) for o in kept[:i])]


def load(binary: Path, config_path: Path, stubs: list[str]) -> dict[str, Any]:
    """Kata's verdict on `config_path` (with its config.d): {"ok": True, ...settings} or {"ok": False, "error"}."""
    script = ["set -e"]
    with tempfile.NamedTemporaryFile(prefix="kata-oracle-null-") as null:
        return _run(binary, config_path, stubs, script, null.name)


def _run(binary: Path, config_path: Path, stubs: list[str], script: list[str], null: str) -> dict[str, Any]:
    for point in _mount_points(stubs):
        if point == "/dev":  # keep /dev/null usable under the new /dev
            script.append(f"mount --bind /dev/null {shlex.quote(null)}")
        script.append(f"mount -t tmpfs tmpfs {shlex.quote(point)}")
        if point == "/dev":
            script += ["touch /dev/null", f"mount --bind {shlex.quote(null)} /dev/null"]
    for stub in stubs:
        quoted = shlex.quote(stub)
        script += [f"mkdir -p $(dirname {quoted})", f"[ -e {quoted} ] || {{ touch {quoted}; chmod 755 {quoted}; }}"]
    script.append("exec " + shlex.join([str(binary), str(config_path)]))
    out = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", "\n".join(script)],
                         capture_output=True, text=True, check=False, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"kata-oracle failed ({out.returncode}): {out.stderr.strip()}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result
