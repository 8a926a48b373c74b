"""Benchmark: the latency attestation adds to a prepare, on a simulated DGX H100 with simulated evidence.

Runs the plugin's real prepare/unprepare engine in process (simulated host, the real checkpoint and CDI writer)
against the API-server double in its own process (`cc-gpu sim apiserver`, as a real API server would be), and
prepares one claim again and again: once without an `attestation` section and once with `required: true` under the
strict policy (fresh nonce, simulated evidence, full verification with OCSP from the simulated responder's cache,
ES384 token into the CDI env; token files are off by default). Prints the medians and the difference, plus the
attestation step alone.
Target: under 20 ms added per GPU. Run: `python benchmarks/attested_prepare.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cc_gpu.dra.attestsetup import build_attestation
from cc_gpu.dra.claims import parse_claim
from cc_gpu.dra.gate import GatePolicy
from cc_gpu.dra.hostport import build_host
from cc_gpu.dra.plugin import Plugin
from cc_gpu.dra.settings import PluginSettings
from cc_gpu.dra.state import ClaimRef
from cc_gpu.host.sim import SimKernel
from cc_gpu.kube.client import KubernetesApi

DRIVER = "gpu.cc-gpu.io"
NODE = "node-a"
SNP = "kata-qemu-nvidia-gpu-snp"


def _seed_objects() -> list[dict[str, Any]]:
    claim_spec = {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "x"}}]}}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cc-gpu-token-keys"}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}},
        {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": SNP}, "handler": SNP},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "vm", "namespace": "default"},
         "spec": {"nodeName": NODE, "runtimeClassName": SNP,
                  "containers": [{"name": "main", "image": "registry.example/vm:1"}]}},
        *({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
           "metadata": {"name": name, "namespace": "default"}, "spec": claim_spec} for name in ("plain", "attested")),
    ]


def _allocate(api: KubernetesApi, name: str, device: str, attested: bool) -> ClaimRef:
    pod = api.get_pod("default", "vm")
    claim = api.get_resource_claim("default", name)
    devices: dict[str, Any] = {"results": [{"request": "gpu", "driver": DRIVER, "pool": NODE, "device": device}]}
    if attested:
        params = {"apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig", "attestation": {"required": True}}
        devices["config"] = [{"source": "FromClass", "opaque": {"driver": DRIVER, "parameters": params}}]
    claim["status"] = {"allocation": {"devices": devices},
                       "reservedFor": [{"resource": "pods", "name": "vm", "uid": pod["metadata"]["uid"]}]}
    # Compact JSON, as kube-scheduler writes it: the server keeps opaque parameters as the bytes it was sent.
    import urllib.request  # noqa: PLC0415

    url = f"{api.host}/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/{name}/status"
    request = urllib.request.Request(url, data=json.dumps(claim, separators=(",", ":")).encode(), method="PUT",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request).close()
    return ClaimRef("default", claim["metadata"]["uid"], name)


def _start_apiserver(root: Path) -> tuple[subprocess.Popen[bytes], Path]:
    seed, kubeconfig = root / "seed.json", root / "kubeconfig"
    seed.write_text(json.dumps(_seed_objects()))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "cc_gpu", "sim", "apiserver", "--port", "0", "--seed", str(seed),
                             "--kubeconfig-out", str(kubeconfig)], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not kubeconfig.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("the API-server double did not start")
        time.sleep(0.05)
    return proc, kubeconfig


def _timed(n: int, work: Callable[[], object]) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        work()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server, kubeconfig = _start_apiserver(root)
        api = KubernetesApi(kubeconfig)
        # Host-side attestation is a pre-flight of GPUs the host can still query: CC mode off (a GPU in CC mode on
        # gives the host no evidence), so the gate's CC-mode check is waived for this measurement.
        settings = PluginSettings(node_name=NODE, sim="dgx-h100", sim_root=root / "sim", plugin_dir=root / "plugin",
                                  cdi_root=root / "cdi", policy=GatePolicy(require_cc_mode=False)).validate()
        host, _ = build_host(settings, api)
        kernel = SimKernel(root / "sim")
        for bdf, arch in kernel.load()["architecture"].items():
            if arch == "hopper":
                kernel.set_cc_mode(bdf, "off")
        engine = build_attestation(settings, host.host, api)
        plugin = Plugin(settings, host, api, None, engine)
        state = plugin.state
        state.set_inventory(engine.annotate(host.devices()))  # discovery: warms the OCSP and RIM caches
        engine.publish_keys()
        device = sorted(state.inventory())[0]
        plain = _allocate(api, "plain", device, attested=False)
        attested = _allocate(api, "attested", device, attested=True)

        def cycle(ref: ClaimRef) -> Callable[[], None]:
            def run() -> None:
                state.prepare(ref)
                state.unprepare(ref)
            return run

        for ref in (plain, attested):  # warm-up
            cycle(ref)()
        t_plain = _timed(args.rounds, cycle(plain))
        t_attested = _timed(args.rounds, cycle(attested))
        claim = api.get_resource_claim("default", "attested")
        plan = parse_claim(claim, attested.uid, DRIVER, NODE, state.inventory())
        t_step = _timed(args.rounds, lambda: engine.attest_claim(claim, plan))
        engine.close()  # deliver the queued events while the API server still runs
        api.close()
        server.terminate()
        server.wait(timeout=20)
    med_plain, med_attested, med_step = (statistics.median(t) for t in (t_plain, t_attested, t_step))
    print(f"prepare+unprepare, plain claim:     median {med_plain:7.2f} ms  (n={args.rounds})")
    print(f"prepare+unprepare, attested claim:  median {med_attested:7.2f} ms  (n={args.rounds})")
    print(f"added by attestation (difference):  median {med_attested - med_plain:7.2f} ms")
    print(f"attestation step alone (1 GPU):     median {med_step:7.2f} ms  p90 "
          f"{statistics.quantiles(t_step, n=10)[-1]:.2f} ms   (target < 20 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
