"""The plugin process: wires settings, host, API access, state and servers together and runs until told to stop.

Start-up order matters: reconcile the checkpoint first (so a half-done prepare is rolled back before anything new
arrives), publish the slices, then open the DRA socket and only then the registration socket, so the kubelet never
learns of an endpoint that is not ready. Afterwards a watcher republishes when the hardware changes (kernel uevents,
plus a periodic rescan as a safety net) and streams device health; with binding conditions on (and kept by the
server) an `EarlyBinder` binds allocated GPUs before their pods land (`binding.py`). SIGTERM stops the servers and
removes the sockets; it never unbinds a prepared device: only unprepare does that.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import FrameType
from typing import TYPE_CHECKING

from cc_gpu.dra.binding import EarlyBinder, Quarantine
from cc_gpu.dra.cdi import CdiWriter
from cc_gpu.dra.checkpoint import PREPARE_COMPLETED, Checkpoint
from cc_gpu.dra.consumers import ConsumerWatch
from cc_gpu.dra.iommu import parse_kata_version, version_text
from cc_gpu.dra.katacheck import ATTRIBUTE as KATA_CHECK_ATTRIBUTE
from cc_gpu.dra.katacheck import check_handler, run_kata_check
from cc_gpu.dra.locks import GroupLocks
from cc_gpu.dra.observe import Metrics
from cc_gpu.dra.ports import GpuView, HostPort
from cc_gpu.dra.server import DraService, HealthBroadcaster, PluginServers
from cc_gpu.dra.settings import PluginSettings
from cc_gpu.dra.slices import NodeRef, SlicePublisher
from cc_gpu.dra.sockets import SocketPaths
from cc_gpu.dra.state import DeviceState
from cc_gpu.errors import CcGpuError
from cc_gpu.kata_node import read_kata_version
from cc_gpu.kube.api import KubeApi

if TYPE_CHECKING:
    from cc_gpu.dra.attestation import AttestationEngine

log = logging.getLogger("cc_gpu.dra.plugin")


@dataclass
class Plugin:
    settings: PluginSettings
    host: HostPort
    kube: KubeApi
    wait_for_change: Callable[[float], bool] | None = None  # blocks up to N s; True when the hardware may have changed
    attestation: AttestationEngine | None = None  # attested claims, discovery attributes, token keys

    def __post_init__(self) -> None:
        s = self.settings
        self.metrics = Metrics()
        plugin_dir = s.plugin_path
        plugin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state = DeviceState(
            driver=s.driver_name,
            node_name=s.node_name,
            host=self.host,
            kube=self.kube,
            checkpoint=Checkpoint(plugin_dir),
            cdi_writer=CdiWriter(s.cdi_root),
            locks=GroupLocks(plugin_dir / "locks"),
            policy=s.policy,
            attestation=self.attestation,
            kata_version=parse_kata_version(s.kata_check.kata_version or read_kata_version(s.kata_root)),
        )
        log.info("kata version", extra={"kata_version": version_text(self.state.kata_version)})
        if s.kata_check.enabled:
            self.state.kata_check = self._kata_check_handler
        self.consumers = ConsumerWatch(self.state)
        self.health = HealthBroadcaster(s.node_name) if s.health_service else None
        self.service = DraService(self.state, self.metrics)
        self.servers = PluginServers(
            SocketPaths(plugin_dir, s.registry_dir, s.driver_name, s.pod_uid), self.service, self.health, s.probe_port
        )
        self.publisher: SlicePublisher | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.started_at = time.monotonic()
        self.published_at: float | None = None
        self.kata_summary: str | None = None  # the startup Kata check's verdict, published on every device
        self.quarantine = Quarantine(s.binding.quarantine_seconds)
        self.binder: EarlyBinder | None = None  # started once the server is seen to keep binding conditions
        self._refresh_lock = threading.Lock()

    def _kata_check_handler(self, handler: str, gpus: int, functions: int) -> str | None:
        """The early bind's Kata check (`katacheck.check_handler`) with this node's settings."""
        kata = self.settings.kata_check
        devices = list(self.state.inventory().values())
        return check_handler(self.settings.kata_root, handler, gpus, kata.containerd_configs, functions=functions,
                             kata_version=kata.kata_version,
                             node_iommufd=all(d.iommufd for d in devices) if devices else None,
                             kubelet_root=self.settings.registry_dir.parent)

    def _devices(self) -> list[GpuView]:
        """Discovered devices, marked unhealthy where a prepared GPU was rebound outside the plugin."""
        prepared = {
            d.device: c.uid
            for c in self.state.checkpoint.read().values()
            if c.state == PREPARE_COMPLETED and c.boot_id == self.state.boot_id
            for d in c.devices
        }
        refused = self.consumers.check()
        out = []
        for found in self.host.devices():
            owner = prepared.get(found.name)
            view = found
            if owner and not (found.driver or "").startswith("vfio"):
                view = replace(found, healthy=False, health_message=(
                    f"prepared for claim {owner} but the GPU is on driver {found.driver or 'none'}: "
                    "rebound outside the plugin"))
            elif found.name in refused:
                view = replace(found, healthy=False, health_message=f"refused consumer: {refused[found.name]}")
            out.append(view)
        return out

    def refresh(self) -> int:
        """Rediscover, update the inventory, publish slices and health; return the API writes made."""
        with self._refresh_lock:
            return self._refresh()

    def _published(self, devices: list[GpuView]) -> list[GpuView]:
        """What the slices say: quarantine taints and binding conditions, as far as the server keeps them.

        A server that drops taints (DRADeviceTaints off) would advertise a tainted GPU as allocatable: there the
        tainted GPUs are left out of the slice instead. One that drops binding conditions gets none (and no early
        binds: `start`).
        """
        assert self.publisher is not None
        binding = self.settings.binding
        taints = self.quarantine.taints() if binding.quarantine else {}
        conditions = binding.conditions and "bindingConditions" not in self.publisher.dropped
        out = [replace(d, taints=taints.get(d.name, ()), binding_conditions=conditions) for d in devices]
        if "taints" in self.publisher.dropped:
            out = [d for d in out if d.healthy and not d.taints]
        return out

    def _refresh(self) -> int:
        devices = self._devices()
        if self.settings.kata_check.enabled:
            if self.kata_summary is None:  # once, at startup: the most GPUs one pod can get is all of them
                kata = self.settings.kata_check
                self.kata_summary = run_kata_check(
                    self.settings.kata_root, sum(len(d.gpus) for d in devices), kata.containerd_configs,
                    functions=sum(d.functions for d in devices) or None, kata_version=kata.kata_version,
                    node_iommufd=all(d.iommufd for d in devices) if devices else None,
                    kubelet_root=self.settings.registry_dir.parent).summary
            devices = [replace(d, attributes={**d.attributes, KATA_CHECK_ATTRIBUTE: {"string": self.kata_summary}})
                       for d in devices]
        if self.attestation is not None:
            devices = self.attestation.annotate(devices)
            self.attestation.publish_keys()  # also rotates a key past its age
        self.state.set_inventory(devices)
        if self.settings.binding.quarantine:
            self.quarantine.review(devices)  # causes that went: lifted before this publish
        assert self.publisher is not None
        dropped = set(self.publisher.dropped)
        writes = self.publisher.publish(self._published(devices))
        if self.publisher.dropped != dropped:  # the server dropped a feature's fields: publish what it supports
            writes += self.publisher.publish(self._published(devices))
        if writes:
            self.metrics.slice_writes.inc(writes)
        if self.health:
            self.health.update([(d.name, d.healthy, d.health_message) for d in devices])
        return writes

    def start(self) -> None:
        s = self.settings
        counts = self.state.reconcile()
        log.info("startup reconciliation done", extra=counts)
        node = self.kube.get_node(s.node_name)
        self.publisher = SlicePublisher(self.kube, s.driver_name, NodeRef(s.node_name, node["metadata"]["uid"]))
        self.refresh()
        self.published_at = time.monotonic()
        if s.metrics_port:
            self.metrics.serve(s.metrics_port)
        self.servers.start()
        log.info("plugin serving", extra={"driver": s.driver_name, "node": s.node_name,
                                          "dra_socket": str(self.servers.paths.dra),
                                          "startup_seconds": round(self.published_at - self.started_at, 3)})
        self._watcher = threading.Thread(target=self._watch, name="hardware-watch", daemon=True)
        self._watcher.start()
        self._start_binder()

    def _start_binder(self) -> None:
        """Bind early only where the admin says the cluster has binding conditions and the server kept them."""
        assert self.publisher is not None
        if not self.settings.binding.conditions:
            return
        if "bindingConditions" in self.publisher.dropped:
            log.warning("binding conditions are on in the settings but the API server drops them "
                        "(DRADeviceBindingConditions off): GPUs are bound at NodePrepareResources, as without them")
            return
        self.binder = EarlyBinder(self.state, self.kube, self.settings.binding, self.quarantine, self.refresh)
        self.binder.start()

    def _watch(self) -> None:
        last_scan = time.monotonic()
        while not self._stop.is_set():
            changed = False
            if self.wait_for_change is not None:
                changed = self.wait_for_change(0.5)
                settle = time.monotonic() + 1.0
                while changed and time.monotonic() < settle and self.wait_for_change(0.1):
                    pass  # a bind is a burst of uevents: publish once it settles (at most 1 s later)
            else:
                self._stop.wait(0.5)
            due = time.monotonic() - last_scan >= self.settings.rescan_seconds
            if self._stop.is_set() or not (changed or due):
                continue
            last_scan = time.monotonic()
            try:
                self.refresh()
            except CcGpuError as e:
                log.warning("refresh failed", extra={"error": str(e)})

    def stop(self) -> None:
        """Stop serving; prepared devices stay bound (only unprepare unbinds)."""
        self._stop.set()
        if self.binder is not None:
            self.binder.stop()
        if self.health:
            self.health.close()
        self.servers.stop()
        if self._watcher:
            self._watcher.join(timeout=5)
        self.service.pool.shutdown(wait=True)
        if self.attestation is not None:
            self.attestation.close()
        log.info("plugin stopped; prepared devices left bound")

    def run_until_signalled(self) -> int:
        """Serve until SIGTERM (the kubelet's or Kubernetes' stop: exit 0) or SIGINT (Ctrl-C: exit 130, 128 + 2)."""
        done = threading.Event()
        received: list[int] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal received", extra={"signal": signal.Signals(signum).name})
            received.append(signum)
            done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        done.wait()
        self.stop()
        return 128 + signal.SIGINT if signal.SIGINT in received else 0
