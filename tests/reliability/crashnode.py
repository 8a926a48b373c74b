"""A simulated node whose plugin process can be killed at any crash point, restarted, and checked for convergence.

Built on the e2e `Node` (API-server double, kubelet double, real plugin process on the simulated kernel, whose state
lives on disk and so survives the kill). What this adds: starting the plugin with `CC_GPU_CRASH_AT` / a trace file,
telling a crash from a refusal, restarting the way a DaemonSet does (the stale registration socket goes away first, so
the kubelet sees the plugin leave and come back), and `check_converged`: the invariants that must hold on the node
after any crash followed by the kubelet's retries.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cc_gpu.crashpoints import ENV, TRACE_ENV
from cc_gpu.dra import cdi
from cc_gpu.dra.checkpoint import PREPARE_COMPLETED, Checkpoint
from cc_gpu.host.records import RecordStore
from cc_gpu.host.sim import topology
from tests.dra.harness import DRIVER, NODE, REPO, Node


class PluginDied(Exception):
    """The plugin process exited (the injected SIGKILL) while the kubelet was waiting for it."""


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    name: str
    uid: str
    pod_device: str  # "" when the pod does not use the per-pod CDI annotation path

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.namespace, self.name, self.uid)


class CrashNode:
    """One simulated node for one crash run; the API-server double and kubelet double are shared between runs."""

    def __init__(self, node: Node, run: str) -> None:
        self.node = node
        self.run = run
        self._n = 0
        self.originals = {d.bdf: d.driver for d in topology(node.topology).devices}

    # ---- plugin lifecycle ------------------------------------------------------------------------------------------
    def start(self, crash_at: str | None = None, trace: Path | None = None, timeout: float = 30.0) -> bool:
        """Start the plugin; True once registered, False when it died during startup (a crash point there)."""
        env = {ENV: crash_at or "", TRACE_ENV: str(trace) if trace else ""}
        n = self.node
        args = [
            sys.executable, "-m", "cc_gpu", "plugin", "--node-name", NODE, "--sim", n.topology,
            "--sim-root", str(n.sim_root), "--kubeconfig", str(n.root / "kubeconfig"),
            "--plugin-dir", str(n.plugin_dir), "--registry-dir", str(n.kubelet.registry_dir),
            "--cdi-root", str(n.cdi_root), *n.extra_args,
        ]
        with n.log_path.open("ab") as log:
            n.proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(REPO), **env},
                                      stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if n.proc.poll() is not None:
                self._reap()
                return False
            if DRIVER in n.kubelet.plugins:
                return True
            time.sleep(0.02)
        n.proc.kill()
        raise AssertionError("plugin neither registered nor died:\n" + n.log_path.read_text()[-3000:])

    def _reap(self) -> None:
        """After a crash: the stale registration socket disappears (as when the next instance starts), so the kubelet
        double deregisters the dead endpoint before the new one registers."""
        proc = self.node.proc
        assert proc is not None
        code = proc.wait(timeout=20)
        if code != -signal.SIGKILL:
            log = self.node.log_path.read_text()[-3000:]
            raise AssertionError(f"plugin exited with {code}, not by SIGKILL:\n{log}")
        self.node.proc = None
        for sock in self.node.kubelet.registry_dir.glob("*.sock"):
            sock.unlink(missing_ok=True)
        self.node.kubelet.wait_deregistered(DRIVER)

    def stop(self) -> None:
        if self.node.proc is not None:
            self.node.stop_plugin()

    def alive(self) -> bool:
        return self.node.proc is not None and self.node.proc.poll() is None

    def _call(self, fn: Any) -> Any:
        import grpc  # noqa: PLC0415  (tests only)

        try:
            return fn()
        except grpc.RpcError as e:
            if self.node.proc is not None and self.node.proc.wait(timeout=20) is not None:
                self._reap()
                raise PluginDied(str(e.code())) from e
            raise

    # ---- the kubelet's side ----------------------------------------------------------------------------------------
    def new_claim(self, devices: list[str], pod_spec: bool = False,
                  config: list[dict[str, Any]] | None = None) -> ClaimRef:
        self._n += 1
        name = f"{self.run}-{self._n}"
        topo = topology(self.node.topology)
        # The gate wants the TEE the handler names: a TDX-only node runs the TDX class.
        runtime_class = "kata-qemu-nvidia-gpu-tdx" if topo.tdx and not topo.sev_snp else "kata-qemu-nvidia-gpu-snp"
        # The per-pod device is the pod's own (`pod-<its uid>`), as the pod-gate controller sets it on a cluster.
        pod = self.node.pod(f"vm-{name}", runtime_class, cdi_device=pod_spec)
        pod_device = f"{cdi.POD_DEVICE_PREFIX}{pod['metadata']['uid']}" if pod_spec else ""
        ns, cname, uid = self.node.claim(f"claim-{name}", devices, [pod], config=config)
        return ClaimRef(ns, cname, uid, pod_device)

    def prepare(self, claim: ClaimRef) -> tuple[tuple[tuple[str, ...], str, str, tuple[str, ...]], ...]:
        result = self._call(lambda: self.node.kubelet.prepare(DRIVER, [claim.key]))[claim.uid]
        if result.error:
            raise AssertionError(f"prepare of {claim.uid} failed: {result.error}")
        return tuple(result.devices)

    def unprepare(self, claim: ClaimRef) -> None:
        error = self._call(lambda: self.node.kubelet.unprepare(DRIVER, [claim.key]))[claim.uid]
        if error:
            raise AssertionError(f"unprepare of {claim.uid} failed: {error}")

    # ---- invariants ------------------------------------------------------------------------------------------------
    def check_converged(self, prepared: list[ClaimRef]) -> None:
        """Every device prepared and recorded or back on its original driver; nothing orphaned anywhere."""
        n = self.node
        kernel = n.kernel
        entries = Checkpoint(n.plugin_dir).read()
        assert set(entries) == {c.uid for c in prepared}, f"checkpoint holds {sorted(entries)}"
        on_vfio: set[str] = set()
        for claim in prepared:
            entry = entries[claim.uid]
            assert entry.state == PREPARE_COMPLETED, f"{claim.uid} is {entry.state}"
            spec_path = n.cdi_root / f"{cdi.VENDOR}-{cdi.CLASS}_{claim.uid}.json"
            spec = json.loads(spec_path.read_text())
            spec_nodes = {e["path"] for d in spec["devices"] for e in d["containerEdits"]["deviceNodes"]}
            for dev in entry.devices:
                assert dev.original_drivers, f"{claim.uid}/{dev.device}: no original drivers recorded"
                for bdf, original in dev.original_drivers.items():
                    assert original == self.originals[bdf], f"{bdf}: recorded original {original}"
                    assert "vfio" in (kernel.driver_of(bdf) or ""), f"{bdf} is on {kernel.driver_of(bdf)}"
                    on_vfio.add(bdf)
                for node_path in dev.device_nodes:
                    assert node_path in spec_nodes, f"{node_path} missing from {spec_path.name}"
                    assert (n.sim_root / node_path.lstrip("/")).exists(), f"{node_path} does not exist"
        for bdf, original in self.originals.items():
            if bdf not in on_vfio:
                assert kernel.driver_of(bdf) == original, f"{bdf} is on {kernel.driver_of(bdf)}, not {original}"
                override = (kernel.device_dir(bdf) / "driver_override").read_text().strip()
                assert override in ("", "(null)"), f"{bdf} keeps driver_override {override!r}"
        records = RecordStore(n.plugin_dir / "host-state")
        owners = {}
        for group in records.groups():
            record = records.read(group)
            assert record is not None and record.phase == "bound", f"group {group}: record {record}"
            owners[group] = record.owner
        assert set(owners.values()) == {c.uid for c in prepared}, f"host records owned by {owners}"
        want = {f"{cdi.VENDOR}-{cdi.CLASS}_{c.uid}.json" for c in prepared}
        want |= {f"{cdi.VENDOR}-{cdi.CLASS}_{c.pod_device}.json" for c in prepared if c.pod_device}
        have = {p.name for p in n.cdi_root.iterdir()} if n.cdi_root.exists() else set()
        assert have == want, f"CDI root holds {sorted(have)}, want {sorted(want)}"
        for pod_device in {c.pod_device for c in prepared if c.pod_device}:
            nodes = {p for c in prepared if c.pod_device == pod_device for d in entries[c.uid].devices
                     for p in d.device_nodes}
            spec = json.loads((n.cdi_root / f"{cdi.VENDOR}-{cdi.CLASS}_{pod_device}.json").read_text())
            got = {e["path"] for d in spec["devices"] for e in d["containerEdits"]["deviceNodes"]}
            assert got == nodes, f"per-pod spec {pod_device} names {sorted(got)}, want {sorted(nodes)}"
        tokens = n.plugin_dir / "tokens"
        owners = {p.name for p in tokens.iterdir()} if tokens.is_dir() else set()
        assert owners <= {c.uid for c in prepared}, f"attestation tokens of unprepared claims: {sorted(owners)}"
        temps = [p.name for p in n.plugin_dir.glob(".*.tmp")]
        assert not temps, f"temp files left in the plugin directory: {temps}"
