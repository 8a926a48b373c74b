"""Observability for the plugin: Prometheus metrics and JSON log lines.

Metrics are kept out of the business logic: the gRPC layer times each claim with `Metrics.claim_op`, a context
manager, and counts errors by the error type's `reason`. Logs are one JSON object per line with the claim UID as a
field, so a node's log can be filtered per claim; nothing secret (tokens, kubeconfig contents) is ever a log field.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cc_gpu.dra.errors import reason_of

_STD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and every `extra=` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_json_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Metrics:
    """The plugin's Prometheus metrics, in their own registry (several plugins can live in one test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.ops = Counter("cc_gpu_dra_operations", "Claims processed, by operation and result", ["op", "result"],
                           registry=self.registry)
        self.latency = Histogram("cc_gpu_dra_operation_seconds", "Per-claim latency by operation", ["op"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.errors = Counter("cc_gpu_dra_errors", "Failed claim operations by operation and reason",
                              ["op", "reason"], registry=self.registry)
        self.prepared = Gauge("cc_gpu_dra_prepared_devices", "Devices currently prepared on this node",
                              registry=self.registry)
        self.slice_writes = Counter("cc_gpu_dra_resourceslice_writes", "API writes made to publish ResourceSlices",
                                    registry=self.registry)

    @contextlib.contextmanager
    def claim_op(self, op: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        except Exception as e:
            self.ops.labels(op, "error").inc()
            self.errors.labels(op, reason_of(e)).inc()
            raise
        else:
            self.ops.labels(op, "ok").inc()
        finally:
            self.latency.labels(op).observe(time.perf_counter() - start)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104  (a node daemon's metrics endpoint)
        start_http_server(port, addr=addr, registry=self.registry)
