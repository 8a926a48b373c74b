"""Helpers for the attested-claim end-to-end tests: a node with attestation settings, claim configs, sim knobs."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cc_gpu.host.sim import create_sim_host
from tests.dra.harness import DRIVER, NODE, REPO, Node, opaque, simulated_node

KEYS_NAMESPACE = "cc-gpu-token-keys"
FAULTS_FILE = "attestation-faults.json"


def bdf_of(device: str) -> str:
    parts = device.removeprefix("gpu-").split("-")
    return f"{parts[0]}:{parts[1]}:{parts[2]}.{parts[3]}"


def device_of(bdf: str) -> str:
    return "gpu-" + bdf.replace(":", "-").replace(".", "-")


def attest_config(source: str = "FromClass", **section: Any) -> dict[str, Any]:
    """One allocation config entry carrying an `attestation` section (FromClass: as the attested DeviceClass sets)."""
    return {"source": source, "opaque": {"driver": DRIVER, "parameters": opaque(attestation=section)}}


@contextlib.contextmanager
def attested_node(root: Path, topology: str = "dgx-h100", faults: dict[str, Any] | None = None,
                  settings: str = "", cc_mode: str | None = "off") -> Iterator[Node]:
    """A node (API-server double, kubelet double) whose plugin will run with the given `[attestation]` settings.

    Host-side attestation is a pre-flight check of GPUs the host driver can still query, so by default every GPU is
    set to CC mode `off` (`cc_mode=None` keeps the topology's modes: a GPU in CC mode `on` answers only its guest)."""
    with simulated_node(root, topology) as node:
        if cc_mode is not None:
            create_sim_host(topology, node.sim_root)  # the tree the plugin will reuse, built now to set CC modes
            for bdf, arch in node.kernel.load()["architecture"].items():
                if arch in ("hopper", "blackwell"):
                    node.kernel.set_cc_mode(bdf, cc_mode)
        node.server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEYS_NAMESPACE}})
        config = root / "plugin.toml"
        config.write_text(f'[attestation]\nkeys_namespace = "{KEYS_NAMESPACE}"\n{settings}')
        node.extra_args = ["--config", str(config)]
        node.sim_root.mkdir(parents=True, exist_ok=True)
        (node.sim_root / FAULTS_FILE).write_text(json.dumps(faults or {}))
        yield node


def move_to_vfio(node: Node, bdf: str) -> None:
    """An admin moves a GPU to vfio-pci behind the plugin's back (the already-on-vfio cases)."""
    k = node.kernel
    with contextlib.suppress(OSError):
        k.load_module("vfio-pci")
    k.write(k.sys / "bus" / "pci" / "devices" / bdf / "driver_override", "vfio-pci")
    k.write(k.sys / "bus" / "pci" / "drivers" / "nvidia" / "unbind", bdf)
    k.write(k.sys / "bus" / "pci" / "drivers" / "vfio-pci" / "bind", bdf)


def pod_uid_of(node: Node, claim: tuple[str, str, str]) -> str:
    status = node.api.get_resource_claim(claim[0], claim[1])["status"]
    return str(status["reservedFor"][0]["uid"])


def device_status(node: Node, claim: tuple[str, str, str], device: str) -> dict[str, Any]:
    status = node.api.get_resource_claim(claim[0], claim[1]).get("status") or {}
    (entry,) = [d for d in status.get("devices") or [] if d["device"] == device]
    return dict(entry)


def condition(entry: dict[str, Any], kind: str = "Attested") -> dict[str, Any]:
    (cond,) = [c for c in entry["conditions"] if c["type"] == kind]
    return dict(cond)


def cdi_spec(node: Node, claim_uid: str) -> dict[str, Any] | None:
    path = node.cdi_root / f"cc-gpu.io-vfio_{claim_uid}.json"
    return json.loads(path.read_text()) if path.exists() else None


def events_for(node: Node, claim: tuple[str, str, str]) -> list[dict[str, Any]]:
    items, _ = node.server.store.list_matching(
        node.server.store_type("events", ""), claim[0], lambda e: (e.get("involvedObject") or {}).get("uid") == claim[2]
    )
    return items


def check_token(node: Node, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `cc-gpu attest check-token` as a workload would, against the node's published key ConfigMap."""
    cm = node.api.get_config_map(KEYS_NAMESPACE, f"cc-gpu-token-keys-{NODE}")
    path = node.root / "keys-configmap.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [cm]}))  # as `kubectl get -l ...`
    return subprocess.run(
        [sys.executable, "-m", "cc_gpu", "attest", "check-token", "--token", "-", "--keys-configmap", str(path), *args],
        input=token, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60,
        check=False,
    )
