"""Crash scenarios: what the kubelet asks of the plugin, on which topology, and how it retries after the crash.

Each scenario is first run once with a crash trace, which lists every crash point the plugin process passes (startup
and the operation apart). Then the scenario is replayed once per (point, n-th pass) with the process killed there,
restarted without the crash, the kubelet's retry replayed, and the node checked for convergence; afterwards every
claim still prepared is unprepared and the node must be exactly as it was built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cc_gpu.dra.kubelet import KubeletDouble
from cc_gpu.host.sim import create_sim_host
from cc_gpu.kube.apiserver import ApiServerDouble
from cc_gpu.kube.client import KubernetesApi
from tests.dra.attested import KEYS_NAMESPACE, attest_config
from tests.dra.harness import DRIVER, NODE, Node
from tests.reliability.crashnode import ClaimRef, CrashNode, PluginDied


@dataclass(frozen=True)
class Scenario:
    name: str
    topology: str
    devices: tuple[int, ...]  # indices into the node's advertised devices, one request each
    operation: str  # "prepare" | "unprepare" | "startup" (restart after a crash mid-prepare)
    retry: str  # what the kubelet sends after the crash: "prepare" (pod still starting) | "unprepare" (pod gone)
    pod_spec: bool = False  # the pod uses the per-pod CDI annotation path
    startup_points: bool = False  # also kill at the points passed while the plugin starts
    setup_crash: str = ""  # "startup" only: where the previous instance died mid-prepare
    attested: bool = False  # the node verifies GPU attestation and the claim requires it
    focus: tuple[str, ...] = ("*",)  # the `name:n` kills of the CI tier ("*": all); the full tier kills at all


SCENARIOS = (
    Scenario("prepare-group-with-audio", "h100-pcie-audio", (0,), "prepare", "prepare", pod_spec=True,
             startup_points=True),
    Scenario("unprepare-group-with-audio", "h100-pcie-audio", (0,), "unprepare", "unprepare", pod_spec=True),
    Scenario("prepare-two-groups", "dgx-h100", (0, 1), "prepare", "prepare",
             focus=("prepare-after-bind-group:1", "bind-after-record:2", "bind-after-member:2")),
    Scenario("prepare-two-groups-pod-deleted", "dgx-h100", (0, 1), "prepare", "unprepare",
             focus=("prepare-after-bind-group:1", "prepare-after-cdi:1")),
    Scenario("unprepare-iommufd", "blackwell-iommufd", (0,), "unprepare", "unprepare",
             focus=("unprepare-after-marked:1", "restore-after-unbind:1")),
    Scenario("prepare-attested", "dgx-h100", (0,), "prepare", "prepare", attested=True,
             focus=("prepare-after-started:1", "bind-after-member:1", "prepare-after-cdi:1",
                    "prepare-after-completed:1")),
    Scenario("startup-rolls-back-two-groups", "dgx-h100", (0, 1), "startup", "prepare", startup_points=True,
             setup_crash="prepare-after-cdi",
             focus=("restore-after-unbind:2", "unprepare-after-dropped:1", "reconcile-after-rollback:1")),
)
# The CI tier kills at each scenario's focus; CC_GPU_CRASH_FULL=1 kills at every pass of every point of every scenario.
FULL = os.environ.get("CC_GPU_CRASH_FULL", "") not in ("", "0")


@dataclass
class Outcome:
    trace: list[str]  # every point passed, in order
    startup_end: int  # trace[:startup_end]: passed while the plugin under test started
    op_start: int  # trace[op_start:op_end]: passed during the operation under test (not the retries and checks after)
    op_end: int
    crashed: bool


class Shared:
    """The API-server double and its client, shared by every run (a fresh node directory and kubelet per run)."""

    def __init__(self, server: ApiServerDouble, api: KubernetesApi, base: Path) -> None:
        self.server = server
        self.api = api
        self.base = base
        self.runs = 0
        self.seeded = False

    def node(self, topology: str, attested: bool = False) -> Node:
        self.runs += 1
        root = self.base / f"r{self.runs}"  # short: Unix socket paths are limited to 108 bytes
        root.mkdir(parents=True)
        self.server.write_kubeconfig(root / "kubeconfig")
        kubelet = KubeletDouble(root / "registry")
        kubelet.start()
        node = Node(root, self.server, self.api, kubelet, topology=topology)
        if not self.seeded:
            node.seed()
            self.server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEYS_NAMESPACE}})
            self.seeded = True
        if attested:
            config = root / "plugin.toml"
            # Token files on (they are off by default): crashes must never leave one behind either. Host-side
            # attestation is a pre-flight of GPUs the host can still query: CC mode off (the gate's CC check waived).
            config.write_text(f'[attestation]\nkeys_namespace = "{KEYS_NAMESPACE}"\ntoken_mount = true\n'
                              '[policy]\nrequire_cc_mode = false\n')
            node.extra_args = ["--config", str(config)]
            create_sim_host(topology, node.sim_root)
            for bdf, arch in node.kernel.load()["architecture"].items():
                if arch in ("hopper", "blackwell"):
                    node.kernel.set_cc_mode(bdf, "off")
        # The kubelet deletes its node's slices when it starts: every run publishes from scratch, deterministically.
        for s in self.api.list_resource_slices(DRIVER, NODE):
            meta = s["metadata"]
            self.api.delete_resource_slice(meta["name"], uid=meta["uid"], resource_version=meta["resourceVersion"])
        return node


def run(shared: Shared, sc: Scenario, crash_at: str | None, trace: Path | None) -> Outcome:
    """One run of `sc`, killed at `crash_at` (None: the trace run); raises AssertionError when the node diverges."""
    node = shared.node(sc.topology, sc.attested)
    cn = CrashNode(node, f"r{shared.runs}")
    crashed = False
    expected: tuple[object, ...] = ()
    try:
        if sc.operation == "startup":
            # A first instance dies mid-prepare; the instance under test starts on what it left behind.
            assert cn.start(crash_at=sc.setup_crash)
            claim = cn.new_claim(_advertised(node, sc.devices), sc.pod_spec, _config(sc))
            try:
                cn.prepare(claim)
                raise AssertionError(f"setup crash point {sc.setup_crash} was not reached")
            except PluginDied:
                pass
        if not cn.start(crash_at=crash_at, trace=trace):
            crashed = True
            assert cn.start()
        startup_end = _lines(trace)
        if sc.operation != "startup":
            claim = cn.new_claim(_advertised(node, sc.devices), sc.pod_spec, _config(sc))
        if sc.operation == "unprepare":
            expected = cn.prepare(claim)
        op_start = _lines(trace)
        try:
            if sc.operation == "prepare":
                expected = cn.prepare(claim)
            elif sc.operation == "unprepare":
                cn.unprepare(claim)
        except PluginDied:
            crashed = True
            assert cn.start()
        op_end = _lines(trace) if sc.operation != "startup" else startup_end
        if crash_at:
            assert crashed, f"the plugin passed {crash_at} without dying"
        prepared: list[ClaimRef] = []
        if sc.operation == "unprepare" or sc.retry == "unprepare":
            cn.unprepare(claim)  # the kubelet repeats until it hears success; a repeat must succeed too
        else:
            answer = cn.prepare(claim)
            assert not expected or answer == expected, f"retry answered {answer}, first answer was {expected}"
            assert cn.prepare(claim) == answer, "a repeated prepare must give the same answer"
            if sc.attested:
                assert (node.plugin_dir / "tokens" / claim.uid).is_dir(), "the attested claim carries no token"
            prepared = [claim]
        cn.check_converged(prepared)
        for c in prepared:
            cn.unprepare(c)
        cn.check_converged([])
        return Outcome(_read(trace), startup_end, op_start if sc.operation != "startup" else 0, op_end, crashed)
    finally:
        if cn.alive():
            cn.stop()
        node.kubelet.stop()


def _config(sc: Scenario) -> list[dict[str, object]] | None:
    return [attest_config(required=True)] if sc.attested else None


def _advertised(node: Node, indices: tuple[int, ...]) -> list[str]:
    names = node.devices()
    return [names[i] for i in indices]


def _read(trace: Path | None) -> list[str]:
    if trace is None or not trace.exists():
        return []
    return trace.read_text().split()


def _lines(trace: Path | None) -> int:
    return len(_read(trace))


# Republishing after a bind happens on the plugin's watcher thread at a time of its own: a kill there is real but not
# reproducible by pass count, so publishing is killed only while a fresh node starts, where it is deterministic.
BACKGROUND_POINTS = ("publish-after-write",)


def kill_targets(sc: Scenario, outcome: Outcome) -> list[str]:
    """`name:n` values of CC_GPU_CRASH_AT for every pass the scenario's crash runs kill at."""
    targets: list[str] = []
    seen: dict[str, int] = {}
    for i, name in enumerate(outcome.trace):
        seen[name] = n = seen.get(name, 0) + 1
        startup = i < outcome.startup_end
        in_op = outcome.op_start <= i < outcome.op_end
        if not (in_op or (startup and sc.startup_points)):
            continue
        if name in BACKGROUND_POINTS and (not startup or sc.operation == "startup"):
            continue  # after a previous instance, whether startup republishes depends on what that one got to publish
        if not FULL and "*" not in sc.focus and f"{name}:{n}" not in sc.focus:
            continue
        targets.append(f"{name}:{n}")
    return targets
