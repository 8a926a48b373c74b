"""`cc-gpu demo`: a simulated node end to end, narrated, on any of the simulated topologies.

It starts the API-server double, the real plugin process (`cc-gpu plugin --sim TOPOLOGY`) on a simulated host and the
kubelet double, then runs one step after another, each a function below that takes the free GPUs it needs (releasing
earlier claims when the node has too few) and says why when the node cannot show it:

- the published ResourceSlice (a GPU that shares its IOMMU group with another GPU is published once, for the group);
- a claim for a confidential Kata pod (SNP or TDX, whichever TEE the node has): the CDI spec naming the GPU's iommufd
  cdev, every function of its IOMMU group moved to the vfio driver (the audio function, the second GPU of a shared
  group, the variant driver `nvgrace_gpu_vfio_pci` on GH200); or the refusal the node's facts predict (a NIC in the
  group, a kernel without iommufd);
- a claim for a plain `runc` pod, refused;
- two claims prepared in parallel (each bind takes `--bind-delay` on the simulated kernel);
- host pre-flight attestation on GPUs whose CC mode is off (the host driver can still query them): a claim accepted
  (its verdict token verified against the node's published key) and one rejected because one measurement of the
  simulated evidence was tampered on purpose; on a node whose GPUs are all in CC mode, the host's refusal instead;
- a guest-attested claim on a GPU in CC mode on (`demo_guest.py`): the challenge on the claim, `cc-gpu attest collect`
  in the simulated VM, the verification service's verdict on the claim, a replay refused;
- everything unprepared, every function back on its original driver.

A node without an IOMMU (`no-iommu`) stops at the plugin's refusal to start. The expected outcome of each step follows
from the topology's data (`_Expect`), so the exit status is 0 when the node behaved as its facts predict and 1 when not.
Everything happens under a temporary directory unless `--workdir` keeps it; Ctrl-C stops the plugin and the doubles.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cc_gpu.host.sim.topologies import SimDevice, SimTopology

DRIVER = "gpu.cc-gpu.io"
NODE = "demo-node"
NAMESPACE = "default"
SNP = "kata-qemu-nvidia-gpu-snp"
TDX = "kata-qemu-nvidia-gpu-tdx"
KEYS_NAMESPACE = "cc-gpu-token-keys"
TAMPERED_INDEX = 9
REGISTRATION_TIMEOUT = 60.0
ATTESTED = [{"source": "FromClass", "opaque": {"driver": DRIVER, "parameters": {
    "apiVersion": "cc-gpu.io/v1alpha1", "kind": "VfioDeviceConfig", "attestation": {"required": True}}}}]

Claim = tuple[str, str, str]  # namespace, name, uid: what the kubelet passes to the plugin


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cc_gpu.cli._input import directory, nonnegative_seconds  # noqa: PLC0415
    from cc_gpu.host.sim import TOPOLOGIES  # noqa: PLC0415

    parser.add_argument("--topology", default="dgx-h100", choices=TOPOLOGIES, metavar="TOPOLOGY",
                        help=f"simulated node topology: {', '.join(TOPOLOGIES)} (default: %(default)s)")
    parser.add_argument("--workdir", type=directory,
                        help="keep the simulated node's files here (default: a temp dir)")
    parser.add_argument("--bind-delay", type=nonnegative_seconds, default=0.5,
                        help="simulated seconds per device bind (default: %(default)s)")


class End(Exception):
    """The story ends early at this step; `code` is the demo's exit status."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class _Expect:
    """What the topology's facts predict, so the demo can tell an expected refusal from a failure."""

    plugin_refuses: bool  # no IOMMU: the plugin refuses to start
    nothing_published: bool  # no NVIDIA GPU at all
    foreign: tuple[SimDevice, ...]  # non-NVIDIA functions sharing the first GPU's IOMMU group
    iommufd: bool
    handler: str  # the confidential RuntimeClass handler matching the node's TEE


def _is_gpu(d: SimDevice) -> bool:
    return d.vendor == 0x10DE and d.klass >> 16 == 0x03


def _is_bridge(d: SimDevice) -> bool:
    return d.klass >> 8 == 0x0604


def _expect(topo: SimTopology) -> _Expect:
    gpus = [d for d in topo.devices if _is_gpu(d)]
    first_group = gpus[0].group if gpus else None
    foreign = tuple(d for d in topo.devices
                    if d.group == first_group and d.vendor != 0x10DE and not _is_bridge(d))
    return _Expect(plugin_refuses=not topo.iommu, nothing_published=not gpus, foreign=foreign,
                   iommufd=topo.iommufd, handler=TDX if topo.tdx and not topo.sev_snp else SNP)


def _say(title: str) -> None:
    print(f"\n== {title}")


def _attr(device: dict[str, Any], name: str) -> str:
    value = device["attributes"].get(name, {})
    return str(next(iter(value.values()), ""))


class _Demo:
    """The doubles, the plugin process and the claims made so far."""

    def __init__(self, root: Path, topology: str, bind_delay: float) -> None:
        from cc_gpu.dra.kubelet import KubeletDouble  # noqa: PLC0415 (lazy: see cc_gpu.cli)
        from cc_gpu.host.sim import topology as sim_topology  # noqa: PLC0415
        from cc_gpu.kube.apiserver import ApiServerDouble  # noqa: PLC0415
        from cc_gpu.kube.client import KubernetesApi  # noqa: PLC0415

        self.root = root
        self.topology = sim_topology(topology)
        self.expect = _expect(self.topology)
        self.bind_delay = bind_delay
        self.server = ApiServerDouble().start()
        self.kubeconfig = self.server.write_kubeconfig(root / "kubeconfig")
        self.api = KubernetesApi(self.kubeconfig)
        self.kubelet = KubeletDouble(root / "registry")
        self.proc: subprocess.Popen[bytes] | None = None
        self.n = 0
        self.devices: dict[str, str] = {}  # published device name -> PCI address
        self.held: dict[str, Claim] = {}  # device -> the prepared claim holding it
        self.made: list[Claim] = []  # every claim made, unprepared at the end
        self.cc_off = _cc_off_gpus(self.topology)  # PCI addresses switched to CC mode off for the host pre-flight
        from cc_gpu.cli.demo_guest import free_port  # noqa: PLC0415

        self.guest_port = free_port()  # the verification service of the guest-attestation step

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.kubelet.stop()
        self.api.close()
        self.server.stop()

    # --- the node, the plugin and the claims -------------------------------------------------------------------

    def seed(self) -> None:
        from cc_gpu.kube.apiserver import cluster  # noqa: PLC0415

        self.server.create(cluster.node(NODE))
        for handler in (SNP, TDX, "runc"):
            self.server.create(cluster.runtime_class(handler, handler))
        self.server.create(cluster.device_class("vfio-gpu", DRIVER))
        self.server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEYS_NAMESPACE}})

    def tamper_evidence(self, bdf: str) -> None:
        """The simulated GPU at `bdf` will report a measurement that matches no reference value (read per request)."""
        sim = self.root / "sim"
        sim.mkdir(parents=True, exist_ok=True)
        (sim / "attestation-faults.json").write_text(json.dumps({bdf: {"tamper_measurement": TAMPERED_INDEX}}))

    def start_plugin(self) -> str | None:
        """Start the plugin and wait for its registration; None once registered, else the plugin's last words."""
        from cc_gpu.cli.demo_guest import plugin_settings  # noqa: PLC0415
        from cc_gpu.dra.kubelet import RegistrationError  # noqa: PLC0415
        from cc_gpu.host.sim import SimKernel, create_sim_host  # noqa: PLC0415

        create_sim_host(self.topology.name, self.root / "sim")
        for bdf in self.cc_off:  # host pre-flight attestation needs GPUs the host driver can still query
            SimKernel(self.root / "sim").set_cc_mode(bdf, "off")
        config = self.root / "plugin.toml"
        # The GPUs in CC mode `off` are for the host pre-flight; the CC-mode part of the gate is waived on this demo
        # node so that a confidential pod may receive them (the step says so).
        config.write_text(plugin_settings(self.root, self.guest_port)
                          + ("[policy]\nrequire_cc_mode = false\n" if self.cc_off else ""))
        args = [sys.executable, "-m", "cc_gpu", "plugin", "--node-name", NODE, "--sim", self.topology.name,
                "--sim-root", str(self.root / "sim"), "--kubeconfig", str(self.kubeconfig),
                "--plugin-dir", str(self.root / "plugin"), "--registry-dir", str(self.root / "registry"),
                "--cdi-root", str(self.root / "cdi"), "--config", str(config)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                              os.environ.get("PYTHONPATH", "")])}
        self.kubelet.start()
        log = self.root / "plugin.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=out)
        deadline = time.monotonic() + REGISTRATION_TIMEOUT
        while True:
            try:
                self.kubelet.wait_registered(DRIVER, timeout=0.2)
                return None
            except RegistrationError:
                if self.proc.poll() is not None:
                    lines = log.read_text(errors="replace").splitlines()
                    return next((x for x in reversed(lines) if x.startswith("cc-gpu plugin:")),
                                f"exited with status {self.proc.returncode} (see {log})")
                if time.monotonic() > deadline:
                    return f"did not register within {REGISTRATION_TIMEOUT:.0f}s (see {log})"

    def claim_for(self, runtime_class: str | None, device: str, config: list[dict[str, Any]] | None = None) -> Claim:
        """A pod and its claim, allocated `device` as kube-scheduler would (Go's canonical JSON bytes)."""
        from cc_gpu.kube.apiserver import cluster  # noqa: PLC0415

        self.n += 1
        name = f"claim-{self.n}"
        pod = self.server.create(cluster.pod(NAMESPACE, f"pod-{self.n}", node_name=NODE,
                                             runtime_class_name=runtime_class, claims=[name]))
        claim = self.server.create(cluster.resource_claim(NAMESPACE, name, device_class_name="vfio-gpu"))
        claim["status"] = cluster.allocation_status(
            [cluster.Allocated("gpu", DRIVER, NODE, device)], [pod], node_name=NODE, config=config or ()
        )
        self.server.store.replace(self.server.store_type("resourceclaims"), NAMESPACE, name, claim,
                                  subresource="status")
        made = (NAMESPACE, name, str(claim["metadata"]["uid"]))
        self.made.append(made)
        return made

    def prepare(self, claim: Claim, device: str) -> str | None:
        """Prepare one claim; its error, or None (and the device is held)."""
        result = self.kubelet.prepare(DRIVER, [claim])[claim[2]]
        if not result.error:
            self.held[device] = claim
        return result.error or None

    def free(self, wanted: int, cc_on: bool = True) -> list[str]:
        """Up to `wanted` devices no claim holds, releasing the oldest held claims when the node has too few.

        With `cc_on`, only devices in CC mode on (the ones left for the host pre-flight are kept out of the way);
        without it, only the devices switched to CC mode off.
        """
        pool = [d for d in self.devices if (self.devices[d] in self.cc_off) != cc_on]
        for device, claim in list(self.held.items()):
            if len([d for d in pool if d not in self.held]) >= wanted:
                break
            if device not in pool:
                continue
            self.kubelet.unprepare(DRIVER, [claim])
            del self.held[device]
            print(f"(released claim {_ref(claim)} to free {device}: this node has {len(self.devices)} GPU device(s))")
        return [d for d in pool if d not in self.held][:wanted]

    def events_for(self, claim: Claim) -> list[dict[str, Any]]:
        """The Events on a claim, read over HTTP from the double like `kubectl get events` would."""
        import urllib.request  # noqa: PLC0415

        with urllib.request.urlopen(f"{self.server.url}/api/v1/namespaces/{claim[0]}/events") as resp:  # noqa: S310
            items = json.loads(resp.read())["items"]
        return [e for e in items if e["involvedObject"]["name"] == claim[1]]

    def print_events(self, claim: Claim, wait: float = 0.0) -> None:
        deadline = time.monotonic() + wait
        while not self.events_for(claim) and time.monotonic() < deadline:
            time.sleep(0.05)
        for event in self.events_for(claim):
            print(f"Event on claim {_ref(claim)}: {event['type']} {event['reason']}")

    def driver_of(self, bdf: str) -> str:
        from cc_gpu.host.sim import SimKernel  # noqa: PLC0415

        return SimKernel(self.root / "sim").driver_of(bdf) or "(none)"

    def group_of(self, bdf: str) -> list[SimDevice]:
        """The functions sharing `bdf`'s IOMMU group, bridges left out (they stay with the host)."""
        group = next(d.group for d in self.topology.devices if d.bdf == bdf)
        return [d for d in self.topology.devices if d.group == group and not _is_bridge(d)]


def _ref(claim: Claim) -> str:
    return f"{claim[0]}/{claim[1]}"


def _refusal(demo: _Demo, claim: Claim, device: str, what: str) -> str:
    """Prepare a claim the node must refuse; the refusal, or the demo ends with status 1 when it was prepared."""
    error = demo.prepare(claim, device)
    if not error:
        print(f"unexpected: claim {_ref(claim)} {what} was prepared")
        raise End(1)
    return error


def _cc_off_gpus(topo: SimTopology) -> tuple[str, ...]:
    """On a node with at least four GPU groups, the last two GPUs go to CC mode off for the host pre-flight step.

    A GPU in CC mode on does not answer the host driver, so the host can attest only GPUs in CC mode off (or
    devtools); on smaller nodes every GPU stays on and the step shows the host's refusal instead.
    """
    firsts: dict[int, str] = {}
    for d in topo.devices:
        if _is_gpu(d):
            firsts.setdefault(d.group, d.bdf)
    return tuple(list(firsts.values())[-2:]) if topo.iommu and len(firsts) >= 4 else ()


# --- the steps --------------------------------------------------------------------------------------------------


def _step_start(demo: _Demo) -> None:
    from cc_gpu.attest.sim import DEVICE_ROOT_CN, RIM_ROOT_CN  # noqa: PLC0415

    _say(f"Simulated node {demo.topology.name!r}: {demo.topology.description}")
    print("Simulated: the node's kernel (sysfs, /dev/vfio, IOMMU groups, driver binds), the GPUs' attestation "
          "evidence, and the API server and kubelet (in-process doubles). Real: the `cc-gpu plugin` process.")
    print(f"GPU evidence is signed by a test CA the plugin makes for this run (roots {DEVICE_ROOT_CN!r} and "
          f"{RIM_ROOT_CN!r}), trusted only in --sim mode; NVIDIA's roots sign nothing here.")
    demo.seed()
    print(f"API server double at {demo.server.url}; node {NODE}; RuntimeClasses {SNP}, {TDX}, runc")
    start = time.monotonic()
    refusal = demo.start_plugin()
    if refusal is not None:
        print(f"the plugin refused to start: {refusal}")
        if demo.expect.plugin_refuses:
            print("expected: this node was booted without an IOMMU, so no device can be isolated for a VM; the "
                  "plugin stops rather than publish GPUs it cannot pass through")
            raise End(0)
        raise End(1)
    if demo.expect.plugin_refuses:
        print("unexpected: the plugin started on a node without an IOMMU")
        raise End(1)
    plugin = demo.kubelet.plugins[DRIVER]
    print(f"plugin registered in {time.monotonic() - start:.2f}s: {plugin.name}, versions {list(plugin.versions)}, "
          f"kubelet chose {plugin.version}")


def _step_slice(demo: _Demo) -> None:
    _say("The published ResourceSlice")
    (s,) = demo.api.list_resource_slices(DRIVER, NODE)
    pool = s["spec"]["pool"]
    devices = s["spec"].get("devices") or []
    print(f"ResourceSlice {s['metadata']['name']}: pool {pool['name']} generation {pool['generation']}, "
          f"{len(devices)} devices, owner Node/{s['metadata']['ownerReferences'][0]['name']}")
    print(f"  {'device':<18} {'pciBusID':<13} {'product':<16} {'iommuGroup':>10} {'ccMode':>7} {'iommuFD':>7} "
          f"{'driver':>8}")
    for d in devices:
        bdf = _attr(d, "resource.kubernetes.io/pciBusID")
        demo.devices[d["name"]] = bdf
        print(f"  {d['name']:<18} {bdf:<13} {_attr(d, 'productName'):<16} {_attr(d, 'iommuGroup'):>10} "
              f"{_attr(d, 'ccMode'):>7} {_attr(d, 'iommuFD'):>7} {_attr(d, 'driver'):>8}")
    for name, bdf in demo.devices.items():
        others = [d.bdf for d in demo.group_of(bdf) if _is_gpu(d) and d.bdf != bdf]
        if others:
            print(f"{name} stands for its whole IOMMU group: {bdf} and {', '.join(others)} share it (no ACS "
                  "between them), so they reach a VM together and are published as one device")
    if not devices:
        print("no NVIDIA GPU on this node, so nothing is published and there is nothing to claim")
        raise End(0 if demo.expect.nothing_published else 1)


def _step_confidential_claim(demo: _Demo) -> None:
    handler = demo.expect.handler
    _say(f"Prepare a claim for a pod with runtimeClassName {handler}")
    (device,) = demo.free(1)
    bdf = demo.devices[device]
    claim = demo.claim_for(handler, device)
    error = demo.prepare(claim, device)
    if error:
        print(f"refused: claim {_ref(claim)}: {error}")
        print(f"nothing bound: {bdf} is still on {demo.driver_of(bdf)}")
        if demo.expect.foreign:
            nic = ", ".join(f"{d.bdf} ({d.driver})" for d in demo.expect.foreign)
            print(f"expected: the GPU's IOMMU group also holds {nic}; a group reaches a VM whole, so handing the GPU "
                  "over would hand that device to the tenant too. The plugin refuses unless the admin allow-lists it.")
            raise End(0)
        if not demo.expect.iommufd:
            print("expected: this node publishes iommuFD=false on its devices, so the chart's confidential "
                  "DeviceClasses never allocate them; run the demo on dgx-h100 to see a confidential claim prepared")
            raise End(0)
        raise End(1)
    if demo.expect.foreign or not demo.expect.iommufd:
        print(f"unexpected: claim {_ref(claim)} was prepared on a node whose facts predict a refusal")
        raise End(1)
    spec_path = demo.root / "cdi" / f"cc-gpu.io-vfio_{claim[2]}.json"
    spec = json.loads(spec_path.read_text())
    ids = [f"{spec['kind']}={d['name']}" for d in spec["devices"]]
    print(f"prepared claim {_ref(claim)}: device {device} -> CDI {', '.join(ids)}")
    print(f"CDI spec {spec_path.name}:")
    print("  " + json.dumps(spec, indent=2).replace("\n", "\n  "))
    nodes = [n["path"] for d in spec["devices"] for n in d["containerEdits"].get("deviceNodes", [])]
    print(f"device nodes for the VM: {', '.join(nodes)} (iommufd cdevs: Kata >= 3.26 refuses the legacy group node "
          "for confidential guests)")
    for member in demo.group_of(bdf):
        now = demo.driver_of(member.bdf)
        why = ""
        if member.bdf != bdf:
            why = " (same IOMMU group: it moves with the GPU)"
        if now.endswith("vfio_pci") and now != "vfio-pci":
            why += " (the variant vfio driver modules.alias names for this GPU, not plain vfio-pci)"
        kind = "GPU" if _is_gpu(member) else "function"
        print(f"bound: {member.bdf} {kind} was on {member.driver}, is on {now}{why}")


def _step_runc_refusal(demo: _Demo) -> None:
    _say("A claim for a plain runc pod is refused")
    (device,) = demo.free(1)
    bdf = demo.devices[device]
    claim = demo.claim_for("runc", device)
    print(f"refused: claim {_ref(claim)}: {_refusal(demo, claim, device, 'for a runc pod')}")
    print(f"nothing bound: {bdf} is still on {demo.driver_of(bdf)}")
    demo.print_events(claim, wait=5)


def _step_parallel(demo: _Demo) -> None:
    from cc_gpu.host.sim import SimKernel  # noqa: PLC0415

    _say(f"Two claims on two GPUs in parallel ({demo.bind_delay}s simulated bind each)")
    if len(demo.devices) < 2:
        print(f"skipped: this node publishes {len(demo.devices)} GPU device, the step needs two")
        return
    SimKernel(demo.root / "sim").set_default_bind_delay(demo.bind_delay)
    devices = demo.free(2)
    pair = [demo.claim_for(demo.expect.handler, d) for d in devices]
    start = time.monotonic()
    results = demo.kubelet.prepare(DRIVER, pair)
    elapsed = time.monotonic() - start
    for claim, device in zip(pair, devices, strict=True):
        result = results[claim[2]]
        if result.error:
            print(f"unexpected: claim {_ref(claim)} refused: {result.error}")
            raise End(1)
        demo.held[device] = claim
        print(f"prepared claim {_ref(claim)}: device {device} -> {result.devices[0][3][0]}")
    print(f"wall time for both: {elapsed:.2f}s (a node-wide lock would take at least {2 * demo.bind_delay:.1f}s)")
    SimKernel(demo.root / "sim").set_default_bind_delay(0)


def _step_attestation(demo: _Demo) -> None:
    """One attested claim accepted and one rejected, with the verdicts, the token and the trail they leave."""
    _say("Host pre-flight attestation (class config `attestation: {required: true}`, strict policy, simulated "
         "evidence)")
    if not demo.cc_off:
        _host_refuses_cc_mode(demo)
        return
    print(f"GPUs {', '.join(demo.cc_off)} were switched to CC mode off for this step: the host driver can query "
          "only such GPUs (a GPU in CC mode on answers only the driver inside its VM; see the guest step). This "
          "demo node waives the gate's CC-mode check so that a confidential pod may receive them.")
    free = demo.free(2, cc_on=False)
    good = free[0]
    (s,) = demo.api.list_resource_slices(DRIVER, NODE)
    for d in s["spec"].get("devices") or []:
        if d["name"] in free:
            print(f"discovery: {d['name']} attested={_attr(d, 'attested')} driverVersion={_attr(d, 'driverVersion')} "
                  f"vbiosVersion={_attr(d, 'vbiosVersion')}")
    ok = demo.claim_for(demo.expect.handler, good, ATTESTED)
    error = demo.prepare(ok, good)
    if error:
        print(f"unexpected: attested claim {_ref(ok)} refused: {error}")
        raise End(1)
    print(f"accepted: claim {_ref(ok)} prepared on {good}, now on {demo.driver_of(demo.devices[good])}")
    _show_verdict(demo, ok)

    tampered = free[1]
    bdf = demo.devices[tampered]
    demo.tamper_evidence(bdf)
    print(f"measurement {TAMPERED_INDEX} of {tampered}'s simulated evidence tampered to show a rejection")
    bad = demo.claim_for(demo.expect.handler, tampered, ATTESTED)
    print(f"rejected: claim {_ref(bad)}: {_refusal(demo, bad, tampered, 'with tampered evidence')}")
    print(f"nothing bound: {bdf} is still on {demo.driver_of(bdf)}")
    for claim in (ok, bad):
        demo.print_events(claim, wait=5)


def _show_verdict(demo: _Demo, claim: Claim) -> None:
    """The claim's Attested condition, its token in the CDI spec, and that token verified as a guest would."""
    import jwt  # noqa: PLC0415

    from cc_gpu.attest.binding import check_binding, keys_from_configmap  # noqa: PLC0415
    from cc_gpu.attest.token import TokenVerifier  # noqa: PLC0415

    status = demo.api.get_resource_claim(claim[0], claim[1])["status"]
    cond = next(c for c in status["devices"][0]["conditions"] if c["type"] == "Attested")
    print(f"claim {_ref(claim)} condition Attested={cond['status']} ({cond['reason']}): {cond['message']}")
    spec = json.loads((demo.root / "cdi" / f"cc-gpu.io-vfio_{claim[2]}.json").read_text())
    name, _, token = spec["devices"][0]["containerEdits"]["env"][0].partition("=")
    print(f"CDI env {name}=<{len(token)}-byte ES384 token> (spec mode 0600; no host file: the env reaches the guest)")
    cm = demo.api.get_config_map(KEYS_NAMESPACE, f"cc-gpu-token-keys-{NODE}")
    claims = TokenVerifier(keys_from_configmap(cm)).verify(token, datetime.now(UTC))
    pod_uid = status["reservedFor"][0]["uid"]
    check_binding(claims, str(jwt.get_unverified_header(token)["kid"]), claim_uid=claim[2], pod_uid=pod_uid, node=NODE)
    print(f"token verified against ConfigMap {KEYS_NAMESPACE}/{cm['metadata']['name']} (key {next(iter(cm['data']))}):"
          f" claim {_ref(claim)} (uid {claims['x-cc-gpu-claim-uid'][:8]}...), pod uid {pod_uid[:8]}..., "
          f"node {claims['x-cc-gpu-node']}, GPU {claims['x-cc-gpu-pci-address']}, measres={claims['measres']}")


def _host_refuses_cc_mode(demo: _Demo) -> None:
    """On a node whose GPUs are all in CC mode on, the host path refuses and names the guest path."""
    (device,) = demo.free(1)
    claim = demo.claim_for(demo.expect.handler, device, ATTESTED)
    print(f"refused: claim {_ref(claim)}: {_refusal(demo, claim, device, 'attested by the host in CC mode on')}")
    print("expected: every GPU of this node is in CC mode on, which the host driver cannot query; such GPUs are "
          "attested from inside the VM (next step)")


def _step_guest_attestation(demo: _Demo) -> None:
    from cc_gpu.cli.demo_guest import guest_attested_claim  # noqa: PLC0415

    (device,) = demo.free(1)
    claim = guest_attested_claim(demo, device, demo.guest_port, _say)
    demo.held[device] = claim


def _step_unprepare_all(demo: _Demo) -> int:
    _say("Unprepare everything: every function back on its original driver")
    errors = demo.kubelet.unprepare(DRIVER, demo.made)
    demo.held.clear()
    moved = [m for bdf in demo.devices.values() for m in demo.group_of(bdf)]
    for member in moved:
        now = demo.driver_of(member.bdf)
        print(f"{member.bdf}: {now}{'' if now == member.driver else f' (was {member.driver})'}")
    remaining = sorted(p.name for p in (demo.root / "cdi").glob("*.json"))
    failed = {uid: e for uid, e in errors.items() if e}
    print(f"CDI specs left: {remaining or 'none'}; unprepare errors: {failed or 'none'}")
    back = all(demo.driver_of(m.bdf) == (m.driver or "(none)") for m in moved)
    return 0 if back and not failed and not remaining else 1


STEPS = (_step_start, _step_slice, _step_confidential_claim, _step_runc_refusal, _step_parallel, _step_attestation,
         _step_guest_attestation)


def _script(demo: _Demo, steps: Sequence[Callable[[_Demo], None]] = STEPS) -> int:
    try:
        for step in steps:
            step(demo)
    except End as end:
        if demo.made:
            demo.kubelet.unprepare(DRIVER, demo.made)
        return end.code
    return _step_unprepare_all(demo)


def run(args: argparse.Namespace) -> int:
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # narration as it happens, also through a pipe (`| tee`)
    with tempfile.TemporaryDirectory(prefix="cc-gpu-demo-", dir="/tmp") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        demo = _Demo(root, args.topology, args.bind_delay)
        try:
            return _script(demo)
        finally:
            demo.close()
