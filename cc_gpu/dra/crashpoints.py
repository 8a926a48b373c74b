"""The plugin's crash points: the registry lives in `cc_gpu.crashpoints` (shared with the host layer)."""

from cc_gpu.crashpoints import ENV, POINTS, TRACE_ENV, crashpoint

__all__ = ["ENV", "POINTS", "TRACE_ENV", "crashpoint"]
