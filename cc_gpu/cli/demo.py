"""`cc-gpu demo`: a simulated 8-GPU node end to end, narrated.

It starts the API-server double, the real plugin process (`cc-gpu plugin --sim dgx-h100`) on a simulated host and the
kubelet double; then it shows the published ResourceSlice, prepares a claim for a `kata-qemu-nvidia-gpu-snp` pod
(printing the CDI spec, which names the GPU's iommufd cdev `/dev/vfio/devices/vfioN` because Kata >= 3.26 refuses the
legacy group node for confidential guests, and the bound devices), refuses a claim for a plain `runc` pod with the
reason the plugin gives, prepares two claims in parallel (each bind takes 0.5 s on the simulated kernel), then one
attested claim accepted (its verdict token verified against the node's published key) and one rejected for tampered
simulated evidence, unprepares everything and shows each device back on its original driver. Everything happens
under a temporary directory unless `--workdir` keeps it. On a topology without iommufd (`--topology dgx-h100-legacy`)
the SNP claim is refused with what the node's kernel lacks, and the demo ends there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DRIVER = "gpu.cc-gpu.io"
NODE = "demo-node"
SNP = "kata-qemu-nvidia-gpu-snp"
KEYS_NAMESPACE = "cc-gpu-token-keys"
ATTESTED = [{"source": "FromClass", "opaque": {"driver": DRIVER, "parameters": {
    "apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig", "attestation": {"required": True}}}}]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cc_gpu.cli._input import directory, nonnegative_seconds  # noqa: PLC0415
    from cc_gpu.host.sim import TOPOLOGIES  # noqa: PLC0415

    parser.add_argument("--topology", default="dgx-h100", choices=TOPOLOGIES, metavar="TOPOLOGY",
                        help=f"simulated node topology: {', '.join(TOPOLOGIES)} (default: %(default)s)")
    parser.add_argument("--workdir", type=directory,
                        help="keep the simulated node's files here (default: a temp dir)")
    parser.add_argument("--bind-delay", type=nonnegative_seconds, default=0.5,
                        help="simulated seconds per device bind (default: %(default)s)")


def _say(title: str) -> None:
    print(f"\n== {title}")


def _bdf(device: str) -> str:
    parts = device.removeprefix("gpu-").split("-")
    return f"{parts[0]}:{parts[1]}:{parts[2]}.{parts[3]}"


class _Demo:
    def __init__(self, root: Path, topology: str, bind_delay: float) -> None:
        from cc_gpu.dra.kubelet import KubeletDouble  # noqa: PLC0415 (lazy: see cc_gpu.cli)
        from cc_gpu.kube.apiserver import ApiServerDouble  # noqa: PLC0415
        from cc_gpu.kube.client import KubernetesApi  # noqa: PLC0415

        self.root = root
        self.topology = topology
        self.bind_delay = bind_delay
        self.server = ApiServerDouble().start()
        self.kubeconfig = self.server.write_kubeconfig(root / "kubeconfig")
        self.api = KubernetesApi(self.kubeconfig)
        self.kubelet = KubeletDouble(root / "registry")
        self.proc: subprocess.Popen[bytes] | None = None
        self.n = 0
        self.cc_off: tuple[str, ...] = ()
        from cc_gpu.cli.demo_guest import free_port  # noqa: PLC0415

        self.guest_port = free_port()  # the verification service of the guest-attestation step
        self.driver_name, self.snp, self.bdf = DRIVER, SNP, _bdf

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.kubelet.stop()
        self.api.close()
        self.server.stop()

    def seed(self) -> None:
        from cc_gpu.kube.apiserver import cluster  # noqa: PLC0415

        self.server.create(cluster.node(NODE))
        for handler in (SNP, "kata-qemu-nvidia-gpu-tdx", "runc"):
            self.server.create(cluster.runtime_class(handler, handler))
        self.server.create(cluster.device_class("vfio-gpu", DRIVER))
        self.server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEYS_NAMESPACE}})

    def tamper_evidence(self, device: str) -> None:
        """The simulated GPU at `device` will report a measurement that matches no reference value."""
        sim = self.root / "sim"
        sim.mkdir(parents=True, exist_ok=True)
        (sim / "attestation-faults.json").write_text(json.dumps({_bdf(device): {"tamper_measurement": 9}}))

    def start_plugin(self) -> None:
        from cc_gpu.host.sim import SimKernel, create_sim_host  # noqa: PLC0415

        create_sim_host(self.topology, self.root / "sim")
        for device in self.cc_off:  # host pre-flight attestation needs GPUs the host driver can still query
            SimKernel(self.root / "sim").set_cc_mode(_bdf(device), "off")
        config = self.root / "plugin.toml"
        # The GPUs left in CC mode `off` are for the host pre-flight; the CC-mode part of the gate is waived here so
        # that a confidential pod may receive them in this demonstration.
        from cc_gpu.cli.demo_guest import plugin_settings  # noqa: PLC0415

        config.write_text(plugin_settings(self.root, self.guest_port)
                          + ("[policy]\nrequire_cc_mode = false\n" if self.cc_off else ""))
        args = [sys.executable, "-m", "cc_gpu", "plugin", "--node-name", NODE, "--sim", self.topology,
                "--sim-root", str(self.root / "sim"), "--kubeconfig", str(self.kubeconfig),
                "--plugin-dir", str(self.root / "plugin"), "--registry-dir", str(self.root / "registry"),
                "--cdi-root", str(self.root / "cdi"), "--config", str(config)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                              os.environ.get("PYTHONPATH", "")])}
        self.kubelet.start()
        with (self.root / "plugin.log").open("ab") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=log)
        self.kubelet.wait_registered(DRIVER, timeout=30)

    def claim_for(
        self, runtime_class: str | None, device: str, config: list[dict[str, Any]] | None = None
    ) -> tuple[str, str, str]:
        from cc_gpu.kube.apiserver import cluster  # noqa: PLC0415

        self.n += 1
        pod = self.server.create(cluster.pod("default", f"vm-{self.n}", node_name=NODE,
                                             runtime_class_name=runtime_class, claims=[f"gpu-{self.n}"]))
        claim = self.server.create(cluster.resource_claim("default", f"gpu-{self.n}", device_class_name="vfio-gpu"))
        claim["status"] = cluster.allocation_status(
            [cluster.Allocated("gpu", DRIVER, NODE, device)], [pod], node_name=NODE, config=config or ()
        )
        # As kube-scheduler writes it (Go's canonical JSON bytes), not through the client.
        self.server.store.replace(self.server.store_type("resourceclaims"), "default", f"gpu-{self.n}", claim,
                                  subresource="status")
        return "default", f"gpu-{self.n}", str(claim["metadata"]["uid"])

    def events_for(self, claim_name: str) -> list[dict[str, Any]]:
        """The Events on a claim, read over HTTP from the double like `kubectl get events` would."""
        import urllib.request  # noqa: PLC0415

        with urllib.request.urlopen(f"{self.server.url}/api/v1/namespaces/default/events") as resp:  # noqa: S310
            items = json.loads(resp.read())["items"]
        return [e for e in items if e["involvedObject"]["name"] == claim_name]

    def driver_of(self, device: str) -> str:
        from cc_gpu.host.sim import SimKernel  # noqa: PLC0415

        return SimKernel(self.root / "sim").driver_of(_bdf(device)) or "(none)"


def _attr(device: dict[str, Any], name: str) -> str:
    value = device["attributes"].get(name, {})
    return str(next(iter(value.values()), ""))


def _show_slice(demo: _Demo) -> list[str]:
    (s,) = demo.api.list_resource_slices(DRIVER, NODE)
    pool = s["spec"]["pool"]
    print(f"ResourceSlice {s['metadata']['name']}: pool {pool['name']} generation {pool['generation']}, "
          f"{len(s['spec'].get('devices') or [])} devices, owner Node/{s['metadata']['ownerReferences'][0]['name']}")
    print(f"  {'device':<18} {'pciBusID':<13} {'product':<16} {'iommuGroup':>10} {'ccMode':>7} {'iommuFD':>7} "
          f"{'driver':>8}")
    for d in s["spec"].get("devices") or []:
        print(f"  {d['name']:<18} {_attr(d, 'resource.kubernetes.io/pciBusID'):<13} {_attr(d, 'productName'):<16} "
              f"{_attr(d, 'iommuGroup'):>10} {_attr(d, 'ccMode'):>7} {_attr(d, 'iommuFD'):>7} "
              f"{_attr(d, 'driver'):>8}")
    return [d["name"] for d in s["spec"].get("devices") or []]


def _script(demo: _Demo) -> int:
    from cc_gpu.host.sim import SimKernel  # noqa: PLC0415

    _say("A simulated node, the API-server double and the kubelet double")
    demo.seed()
    demo.tamper_evidence("gpu-0000-ab-00-0")
    demo.cc_off = ("gpu-0000-9a-00-0", "gpu-0000-ab-00-0")
    print(f"API server double at {demo.server.url}; node {NODE}; RuntimeClasses {SNP}, kata-qemu-nvidia-gpu-tdx, runc")
    start = time.monotonic()
    demo.start_plugin()
    plugin = demo.kubelet.plugins[DRIVER]
    print(f"plugin registered in {time.monotonic() - start:.2f}s: {plugin.name}, versions {list(plugin.versions)}, "
          f"kubelet chose {plugin.version}")

    _say("The published ResourceSlice")
    devices = _show_slice(demo)

    _say(f"Prepare a claim for a pod with runtimeClassName {SNP}")
    snp = demo.claim_for(SNP, devices[0])
    result = demo.kubelet.prepare(DRIVER, [snp])[snp[2]]
    if result.error and "iommufd" in result.error:
        print(f"refused: {result.error}")
        print(f"nothing bound: {_bdf(devices[0])} is still on {demo.driver_of(devices[0])}")
        print("this node publishes iommuFD=false on its devices, so the chart's confidential DeviceClasses never "
              "allocate them; run the demo on dgx-h100 to see a confidential claim prepared")
        return 0
    if result.error:
        print(f"unexpected error: {result.error}")
        return 1
    for requests, pool, device, ids in result.devices:
        print(f"prepared {device} (pool {pool}, request {requests[0]}) -> CDI {', '.join(ids)}")
    spec_path = demo.root / "cdi" / f"cc-gpu.io-vfio_{snp[2]}.json"
    print(f"CDI spec {spec_path.name}:")
    print("  " + json.dumps(json.loads(spec_path.read_text()), indent=2).replace("\n", "\n  "))
    print(f"bound: {_bdf(devices[0])} is on {demo.driver_of(devices[0])}")

    _say("The same kind of claim for a plain runc pod is refused")
    runc = demo.claim_for("runc", devices[1])
    refused = demo.kubelet.prepare(DRIVER, [runc])[runc[2]]
    print(f"refused: {refused.error}")
    print(f"nothing bound: {_bdf(devices[1])} is still on {demo.driver_of(devices[1])}")
    for event in demo.events_for(runc[1]):
        print(f"Event on ResourceClaim default/{runc[1]}: {event['type']} {event['reason']}")

    _say(f"Two claims on two GPUs in parallel ({demo.bind_delay}s simulated bind each)")
    SimKernel(demo.root / "sim").set_default_bind_delay(demo.bind_delay)
    pair = [demo.claim_for(SNP, devices[2]), demo.claim_for(SNP, devices[3])]
    start = time.monotonic()
    results = demo.kubelet.prepare(DRIVER, pair)
    elapsed = time.monotonic() - start
    for c in pair:
        (dev,) = results[c[2]].devices
        print(f"prepared {dev[2]} -> {dev[3][0]} (error: {results[c[2]].error or 'none'})")
    print(f"wall time for both: {elapsed:.2f}s (a node-wide lock would take at least {2 * demo.bind_delay:.1f}s)")

    attested = _attested_claims(demo, devices[4], devices[5])
    from cc_gpu.cli.demo_guest import guest_attested_claim  # noqa: PLC0415

    attested.append(guest_attested_claim(demo, devices[6], demo.guest_port, _say))

    _say("Unprepare everything: every device back on its original driver")
    errors = demo.kubelet.unprepare(DRIVER, [snp, runc, *pair, *attested])
    for d in (devices[0], devices[2], devices[3], devices[4]):
        print(f"{_bdf(d)}: {demo.driver_of(d)}")
    remaining = sorted(p.name for p in (demo.root / "cdi").glob("*.json"))
    print(f"CDI specs left: {remaining or 'none'}; unprepare errors: {[e for e in errors.values() if e] or 'none'}")
    return 0 if not any(errors.values()) else 1


def _attested_claims(demo: _Demo, good: str, tampered: str) -> list[tuple[str, str, str]]:
    """One attested claim accepted and one rejected, with the verdicts, the token and the trail they leave."""
    from cc_gpu.attest.binding import check_binding, keys_from_configmap  # noqa: PLC0415
    from cc_gpu.attest.token import TokenVerifier  # noqa: PLC0415

    _say("Host pre-flight attestation (class config `attestation: {required: true}`, strict policy, simulated "
         "evidence; GPUs in CC mode off, which the host driver can still query)")
    (s,) = demo.api.list_resource_slices(DRIVER, NODE)
    for d in s["spec"].get("devices") or []:
        if d["name"] in (good, tampered):
            print(f"discovery: {d['name']} attested={_attr(d, 'attested')} driverVersion={_attr(d, 'driverVersion')} "
                  f"vbiosVersion={_attr(d, 'vbiosVersion')}")
    ok = demo.claim_for(SNP, good, ATTESTED)
    result = demo.kubelet.prepare(DRIVER, [ok])[ok[2]]
    print(f"accepted: {good} prepared (error: {result.error or 'none'}), now on {demo.driver_of(good)}")
    status = demo.api.get_resource_claim(ok[0], ok[1])["status"]["devices"][0]
    cond = next(c for c in status["conditions"] if c["type"] == "Attested")
    print(f"claim condition Attested={cond['status']} ({cond['reason']}): {cond['message']}")
    spec = json.loads((demo.root / "cdi" / f"cc-gpu.io-vfio_{ok[2]}.json").read_text())
    edits = spec["devices"][0]["containerEdits"]
    name, _, token = edits["env"][0].partition("=")
    print(f"CDI env {name}=<{len(token)}-byte ES384 token> (spec mode 0600; no host file: the env reaches the guest)")
    cm = demo.api.get_config_map(KEYS_NAMESPACE, f"cc-gpu-token-keys-{NODE}")
    from datetime import UTC, datetime  # noqa: PLC0415

    import jwt  # noqa: PLC0415

    claims = TokenVerifier(keys_from_configmap(cm)).verify(token, datetime.now(UTC))
    pod_uid = demo.api.get_resource_claim(ok[0], ok[1])["status"]["reservedFor"][0]["uid"]
    check_binding(claims, str(jwt.get_unverified_header(token)["kid"]), claim_uid=ok[2], pod_uid=pod_uid, node=NODE)
    key_name = next(iter(cm["data"]))
    print(f"token verified against ConfigMap {KEYS_NAMESPACE}/{cm['metadata']['name']} (key {key_name}): "
          f"claim {claims['x-cc-gpu-claim-uid'][:8]}..., pod {pod_uid[:8]}..., node {claims['x-cc-gpu-node']}, "
          f"GPU {claims['x-cc-gpu-pci-address']}, measres={claims['measres']}")

    bad = demo.claim_for(SNP, tampered, ATTESTED)
    refused = demo.kubelet.prepare(DRIVER, [bad])[bad[2]]
    print(f"rejected: {refused.error}")
    print(f"nothing bound: {_bdf(tampered)} is still on {demo.driver_of(tampered)}")
    deadline = time.monotonic() + 5
    while not demo.events_for(bad[1]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for claim in (ok, bad):
        for event in demo.events_for(claim[1]):
            print(f"Event on ResourceClaim default/{claim[1]}: {event['type']} {event['reason']}")
    return [ok, bad]


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cc-gpu-demo-", dir="/tmp") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        demo = _Demo(root, args.topology, args.bind_delay)
        try:
            return _script(demo)
        finally:
            demo.close()
