"""Validation of emitted CDI specs against the CDI JSON schema and the Kata rules.

The schema is the one shipped in the Go module of the CDI library Kata resolves with (v0.6.0), fetched by Go from the
module proxy into its module cache (`go mod download`), so nothing of it is copied into the repository.

The one schema validator of the suite: the plugin's unit and end-to-end tests and the Go consumer's tests use it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from tests import gotool

SCHEMA_MODULE = "github.com/container-orchestrated-devices/container-device-interface@v0.6.0"
KATA_MAX_VERSION = (0, 5, 0)  # what the plugin emits: NVIDIA's Kata pin, and below Kata's v0.6.0 library's 0.6.0 cap


@cache
def schema_dir() -> Path:
    """The `schema/` directory of Kata's CDI library module, downloaded into Go's module cache if missing."""
    out = subprocess.run([gotool.go(), "mod", "download", "-json", SCHEMA_MODULE], capture_output=True, text=True,
                         check=False, env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}, cwd="/")
    if out.returncode != 0:
        raise gotool.GoToolchainError(f"go mod download {SCHEMA_MODULE} failed: {out.stdout[-2000:]}{out.stderr}")
    return Path(json.loads(out.stdout)["Dir"]) / "schema"


@cache
def _validator() -> jsonschema.Draft7Validator:
    schema = json.loads((schema_dir() / "schema.json").read_text())
    defs = json.loads((schema_dir() / "defs.json").read_text())
    registry: Registry[Any] = Registry().with_resource("defs.json", Resource(contents=defs, specification=DRAFT7))
    return jsonschema.Draft7Validator(schema, registry=registry)


def kata_violations(spec: dict[str, Any]) -> list[str]:
    """Every rule of the Kata CDI constraints the spec breaks (empty when it satisfies them all)."""
    out = []
    version = tuple(int(x) for x in spec["cdiVersion"].split("."))
    if version > KATA_MAX_VERSION:
        out.append(f"cdiVersion {spec['cdiVersion']} is above 0.5.0")
    if spec.get("containerEdits"):
        out.append("spec-level containerEdits are not empty")
    if not re.match(r"^[a-z][a-z0-9_.-]*[a-z0-9]/[a-z][a-z0-9_.-]*[a-z0-9]$", spec["kind"], re.IGNORECASE):
        out.append(f"kind {spec['kind']!r} is malformed")
    for dev in spec["devices"]:
        nodes = dev.get("containerEdits", {}).get("deviceNodes", [])
        if not nodes:
            out.append(f"device {dev['name']} has no device-level nodes")
        paths = [n["path"] for n in nodes]
        legacy = [p for p in paths if re.match(r"^/dev/vfio/(vfio|\d+)$", p)]
        iommufd = [p for p in paths if re.match(r"^/dev/(iommu|vfio/devices/vfio\d+)$", p)]
        if legacy and iommufd:
            out.append(f"device {dev['name']} mixes legacy and iommufd nodes")
        if any(n.get("hostPath", n["path"]) != n["path"] or not n["path"].startswith("/dev/") for n in nodes):
            out.append(f"device {dev['name']} has a node whose host path is not its real /dev path")
        if set(dev.get("containerEdits", {})) - {"deviceNodes", "env", "mounts"}:
            out.append(f"device {dev['name']} carries edits other than device nodes, env and mounts")
        for mount in dev.get("containerEdits", {}).get("mounts", []):
            if "ro" not in mount.get("options", []):
                out.append(f"device {dev['name']} mounts {mount['hostPath']} writable")
    return out


def validate_schema(spec: dict[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` when `spec` fails the CDI JSON schema."""
    _validator().validate(spec)


def validate_cdi(spec: dict[str, Any]) -> None:
    """Raise when `spec` fails the CDI JSON schema or any Kata rule."""
    validate_schema(spec)
    problems = kata_violations(spec)
    assert not problems, problems
