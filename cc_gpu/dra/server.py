"""The plugin's gRPC endpoints on Unix sockets: registration, DRA v1 and v1beta1, device health, liveness.

The kubelet finds the registration socket in its registry directory, calls GetInfo, and connects to the DRA socket
the answer names. One handler serves both DRA versions (same messages and numbers; v1beta1 lacks `share_id`). Every
claim of a request is prepared concurrently and appears in the response, each with its own error; one claim never
fails another. Sockets are created with mode 0600 (only root on the node may talk to them), stale ones are removed
before listening, and rolling updates use pod-UID socket names so two plugin pods can serve at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from cc_gpu.dra.observe import Metrics
from cc_gpu.dra.proto import (
    dra_health_v1alpha1_pb2 as health_pb,
)
from cc_gpu.dra.proto import (
    dra_health_v1alpha1_pb2_grpc as health_grpc,
)
from cc_gpu.dra.proto import (
    dra_v1_pb2 as v1,
)
from cc_gpu.dra.proto import (
    dra_v1_pb2_grpc as v1_grpc,
)
from cc_gpu.dra.proto import (
    dra_v1beta1_pb2 as v1beta1,
)
from cc_gpu.dra.proto import (
    dra_v1beta1_pb2_grpc as v1beta1_grpc,
)
from cc_gpu.dra.proto import (
    grpc_health_v1_pb2 as probe_pb,
)
from cc_gpu.dra.proto import (
    grpc_health_v1_pb2_grpc as probe_grpc,
)
from cc_gpu.dra.proto import (
    pluginregistration_pb2 as reg_pb,
)
from cc_gpu.dra.proto import (
    pluginregistration_pb2_grpc as reg_grpc,
)
from cc_gpu.dra.sockets import SocketPaths
from cc_gpu.dra.state import ClaimRef, DeviceState, ResultDevice
from cc_gpu.errors import CcGpuError

log = logging.getLogger("cc_gpu.dra.server")

SUPPORTED_VERSIONS = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
HEALTH_VERSION = "v1alpha1.DRAResourceHealth"


def _listen_unix(server: grpc.Server, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket from a previous run
    old = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix://{path}")
    finally:
        os.umask(old)


def _run_claims(
    pool: ThreadPoolExecutor, claims: list[Any], work: Callable[[Any], Any]
) -> dict[str, tuple[Any, str]]:
    """Run `work` for every claim concurrently; map uid -> (result, error message)."""
    futures = {c.uid: pool.submit(work, c) for c in claims}
    out: dict[str, tuple[Any, str]] = {}
    for uid, fut in futures.items():
        try:
            out[uid] = (fut.result(), "")
        except CcGpuError as e:
            out[uid] = (None, str(e))
        except Exception as e:
            log.exception("unexpected error", extra={"claim_uid": uid})
            out[uid] = (None, f"internal error: {type(e).__name__}: {e}")
    return out


class DraService:
    """One handler for both DRA versions; the version's message module is passed per call."""

    def __init__(self, state: DeviceState, metrics: Metrics, workers: int = 32) -> None:
        self.state = state
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="claim")

    def _prepare_one(self, claim: Any) -> list[ResultDevice]:
        ref = ClaimRef(claim.namespace, claim.uid, claim.name)
        with self.metrics.claim_op("prepare"):
            try:
                devices = self.state.prepare(ref)
            except CcGpuError as e:
                log.warning("prepare failed", extra={"claim_uid": ref.uid, "claim": f"{ref.namespace}/{ref.name}",
                                                     "error": str(e), "reason": type(e).__name__})
                raise
        log.info("prepared", extra={"claim_uid": ref.uid, "devices": [d.device_name for d in devices]})
        return devices

    def _unprepare_one(self, claim: Any) -> None:
        ref = ClaimRef(claim.namespace, claim.uid, claim.name)
        with self.metrics.claim_op("unprepare"):
            self.state.unprepare(ref)
        log.info("unprepared", extra={"claim_uid": ref.uid})

    def prepare(self, request: Any, pb: Any) -> Any:
        results = _run_claims(self.pool, list(request.claims), self._prepare_one)
        response = pb.NodePrepareResourcesResponse()
        for uid, (devices, error) in results.items():
            entry = response.claims[uid]
            if error:
                entry.error = error
                continue
            for d in devices:
                entry.devices.add(request_names=list(d.request_names), pool_name=d.pool_name,
                                  device_name=d.device_name, cdi_device_ids=list(d.cdi_device_ids))
        self._update_gauge()
        return response

    def unprepare(self, request: Any, pb: Any) -> Any:
        results = _run_claims(self.pool, list(request.claims), self._unprepare_one)
        response = pb.NodeUnprepareResourcesResponse()
        for uid, (_, error) in results.items():
            response.claims[uid].error = error
        self._update_gauge()
        return response

    def _update_gauge(self) -> None:
        with contextlib.suppress(CcGpuError):
            self.metrics.prepared.set(sum(len(c.devices) for c in self.state.checkpoint.read().values()))


class _V1(v1_grpc.DRAPluginServicer):
    def __init__(self, service: DraService) -> None:
        self.s = service

    def NodePrepareResources(self, request: Any, context: Any) -> Any:
        return self.s.prepare(request, v1)

    def NodeUnprepareResources(self, request: Any, context: Any) -> Any:
        return self.s.unprepare(request, v1)


class _V1beta1(v1beta1_grpc.DRAPluginServicer):
    def __init__(self, service: DraService) -> None:
        self.s = service

    def NodePrepareResources(self, request: Any, context: Any) -> Any:
        return self.s.prepare(request, v1beta1)

    def NodeUnprepareResources(self, request: Any, context: Any) -> Any:
        return self.s.unprepare(request, v1beta1)


class HealthBroadcaster:
    """Streams the complete device health list to every NodeWatchResources watcher, again on every change."""

    def __init__(self, pool_name: str) -> None:
        self.pool_name = pool_name
        self._lock = threading.Lock()
        self._watchers: list[queue.Queue[list[tuple[str, bool, str]] | None]] = []
        self._current: list[tuple[str, bool, str]] = []

    def update(self, devices: list[tuple[str, bool, str]]) -> None:
        with self._lock:
            if devices == self._current:
                return
            self._current = list(devices)
            for w in self._watchers:
                w.put(list(devices))

    def close(self) -> None:
        with self._lock:
            for w in self._watchers:
                w.put(None)

    def message(self, devices: list[tuple[str, bool, str]]) -> Any:
        now = int(time.time())
        out = health_pb.NodeWatchResourcesResponse()
        for name, healthy, msg in devices:
            out.devices.add(
                device=health_pb.DeviceIdentifier(pool_name=self.pool_name, device_name=name),
                health=health_pb.HEALTHY if healthy else health_pb.UNHEALTHY,
                last_updated_time=now,
                message=msg[:1024],
            )
        return out

    def watch(self, context: Any) -> Iterator[Any]:
        q: queue.Queue[list[tuple[str, bool, str]] | None] = queue.Queue()
        with self._lock:
            self._watchers.append(q)
            q.put(list(self._current))
        try:
            while context.is_active():
                try:
                    item = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                if item is None:
                    return
                yield self.message(item)
        finally:
            with self._lock:
                self._watchers.remove(q)


class _Health(health_grpc.DRAResourceHealthServicer):
    def __init__(self, broadcaster: HealthBroadcaster) -> None:
        self.b = broadcaster

    def NodeWatchResources(self, request: Any, context: Any) -> Iterator[Any]:
        return self.b.watch(context)


class _Registration(reg_grpc.RegistrationServicer):
    def __init__(self, driver: str, endpoint: Path, versions: tuple[str, ...], on_status: Callable[[bool, str], None]):
        self.driver = driver
        self.endpoint = endpoint
        self.versions = versions
        self.on_status = on_status

    def GetInfo(self, request: Any, context: Any) -> Any:
        return reg_pb.PluginInfo(type="DRAPlugin", name=self.driver, endpoint=str(self.endpoint),
                                 supported_versions=list(self.versions))

    def NotifyRegistrationStatus(self, request: Any, context: Any) -> Any:
        self.on_status(request.plugin_registered, request.error)
        return reg_pb.RegistrationStatusResponse()


class _Probe(probe_grpc.HealthServicer):
    """gRPC liveness: SERVING while the DRA socket exists and answers."""

    def __init__(self, dra_socket: Path) -> None:
        self.dra_socket = dra_socket

    def Check(self, request: Any, context: Any) -> Any:
        ok = self.dra_socket.is_socket()
        if ok:
            with grpc.insecure_channel(f"unix://{self.dra_socket}") as ch:
                try:
                    grpc.channel_ready_future(ch).result(timeout=1)
                except grpc.FutureTimeoutError:
                    ok = False
        status = probe_pb.HealthCheckResponse.SERVING if ok else probe_pb.HealthCheckResponse.NOT_SERVING
        return probe_pb.HealthCheckResponse(status=status)


class PluginServers:
    """Owns the gRPC servers and their sockets for the plugin's lifetime."""

    def __init__(self, paths: SocketPaths, service: DraService, health: HealthBroadcaster | None,
                 probe_port: int = 0) -> None:
        self.paths = paths
        self.registered = threading.Event()
        self.registration_error = ""
        versions = SUPPORTED_VERSIONS + ((HEALTH_VERSION,) if health else ())
        self.dra = grpc.server(ThreadPoolExecutor(max_workers=16, thread_name_prefix="dra-grpc"))
        v1_grpc.add_DRAPluginServicer_to_server(_V1(service), self.dra)  # type: ignore[no-untyped-call]
        v1beta1_grpc.add_DRAPluginServicer_to_server(_V1beta1(service), self.dra)  # type: ignore[no-untyped-call]
        if health:
            health_grpc.add_DRAResourceHealthServicer_to_server(_Health(health), self.dra)  # type: ignore[no-untyped-call]
        self.reg = grpc.server(ThreadPoolExecutor(max_workers=4, thread_name_prefix="reg-grpc"))
        reg_grpc.add_RegistrationServicer_to_server(  # type: ignore[no-untyped-call]
            _Registration(paths.driver, paths.dra, versions, self._on_status), self.reg
        )
        self.probe: grpc.Server | None = None
        if probe_port:
            self.probe = grpc.server(ThreadPoolExecutor(max_workers=2, thread_name_prefix="probe"))
            probe_grpc.add_HealthServicer_to_server(_Probe(paths.dra), self.probe)  # type: ignore[no-untyped-call]
            self.probe.add_insecure_port(f"0.0.0.0:{probe_port}")

    def _on_status(self, registered: bool, error: str) -> None:
        self.registration_error = error
        if registered:
            log.info("registered with the kubelet", extra={"driver": self.paths.driver})
            self.registered.set()
        else:
            log.error("the kubelet refused registration", extra={"error": error})
            self.registered.clear()

    def start(self) -> None:
        """DRA socket first, so the endpoint exists before the kubelet learns of it."""
        _listen_unix(self.dra, self.paths.dra)
        self.dra.start()
        if self.probe:
            self.probe.start()
        _listen_unix(self.reg, self.paths.registration)
        self.reg.start()

    def stop(self, grace: float = 2.0) -> None:
        """Deregister (remove the registration socket), drain in-flight calls, remove our sockets."""
        with contextlib.suppress(FileNotFoundError):
            self.paths.registration.unlink()
        self.reg.stop(0).wait()
        self.dra.stop(grace).wait()
        if self.probe:
            self.probe.stop(0).wait()
        with contextlib.suppress(FileNotFoundError):
            self.paths.dra.unlink()
