"""Stop a long-running command on SIGTERM or SIGINT, and tell which one came.

SIGTERM is how Kubernetes (and service managers) stop a daemon: a normal end, exit 0. SIGINT is a person pressing
Ctrl-C: the command cleans up the same way but exits 130, as every other command does after Ctrl-C
(`cc_gpu.cli` documents the exit codes).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

from cc_gpu.cli._input import EXIT_INTERRUPTED


class StopSignals:
    """Installs handlers that set `event`; `exit_code()` is 130 once SIGINT has arrived, else 0."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: list[int] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        self.event.set()

    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if signal.SIGINT in self.received else 0
