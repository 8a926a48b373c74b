"""The kubelet plugin's exception subtree.

Each claim in a prepare request fails on its own; the type of the error says why, so the gRPC layer can turn it into the
per-claim `error` string and the metrics layer can count it by reason without parsing messages.
"""

from __future__ import annotations

from cc_gpu.errors import CheckpointError, ConfigError, PermanentError, TemporaryError


class ClaimError(PermanentError):
    """A claim cannot be prepared as it stands (not allocated, replaced, other driver only, unknown device)."""

    reason = "claim"


class OpaqueConfigError(ConfigError):
    """A claim's or class's opaque parameters for this driver failed strict decoding; the message names the field."""

    reason = "config"


class GateRefusedError(PermanentError):
    """The RuntimeClass gate refused to hand a GPU to the pods a claim is reserved for."""

    reason = "runtime-class"


class ClaimBusyError(TemporaryError):
    """Another operation holds a lock this claim needs; the kubelet retries."""

    reason = "busy"


class CheckpointCorruptError(CheckpointError):
    """The checkpoint file exists but cannot be trusted (bad checksum, unknown version, malformed)."""

    reason = "checkpoint"


class CdiError(PermanentError):
    """A CDI spec could not be built or written."""

    reason = "cdi"


def reason_of(exc: BaseException) -> str:
    """A short, stable label for metrics: the error's `reason` attribute, else its class name."""
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, str) else type(exc).__name__
