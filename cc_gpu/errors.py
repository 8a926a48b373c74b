"""The root of the project's exception tree.

Every error the project raises on purpose derives from `CcGpuError`, so callers at the edges (the CLI, the gRPC
handlers) can tell an expected, explained failure from a bug. Each layer keeps its own subtree in its own package
(`cc_gpu.host.errors`, `cc_gpu.attest.errors`, ...) under the roots declared here; retry behaviour is carried by the
type (`TemporaryError` may succeed if tried again later, `PermanentError` will not) rather than by string matching.
"""

from __future__ import annotations


class CcGpuError(Exception):
    """Base of every error raised deliberately by cc-gpu."""


class TemporaryError(CcGpuError):
    """The operation may succeed if retried later (a busy device, a lock held elsewhere, an API server hiccup)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(CcGpuError):
    """Retrying the same operation with the same input will fail the same way."""


class HostError(CcGpuError):
    """Root of errors from the host layer (sysfs, /dev, /proc, NVML, netlink)."""


class AttestationError(CcGpuError):
    """Root of errors from evidence parsing and verification."""


class CheckpointError(CcGpuError):
    """Root of errors reading or writing the plugin's checkpoint."""


class ConfigError(CcGpuError):
    """Root of errors in user-supplied configuration (flags, TOML files, claim parameters)."""


class KubeError(CcGpuError):
    """Root of errors talking to the Kubernetes API server."""
