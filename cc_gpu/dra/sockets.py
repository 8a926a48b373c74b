"""Where the plugin's two Unix sockets go, checked before anything listens.

Kept apart from the gRPC server so the settings can check the paths when they are read, without importing gRPC.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cc_gpu.errors import ConfigError

MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL; gRPC fails longer ones with no useful error


@dataclass(frozen=True)
class SocketPaths:
    """Where the two sockets go; `pod_uid` switches to the rolling-update names."""

    plugin_dir: Path
    registry_dir: Path
    driver: str
    pod_uid: str = ""

    def __post_init__(self) -> None:
        for path in (self.dra, self.registration):
            if len(os.fsencode(path)) > MAX_SOCKET_PATH:
                raise ConfigError(
                    f"socket path {path} is {len(os.fsencode(path))} bytes; a Unix socket path has at most "
                    f"{MAX_SOCKET_PATH} (choose a shorter --plugin-dir, --registry-dir or driver name)"
                )

    @property
    def dra(self) -> Path:
        return self.plugin_dir / (f"dra-{self.pod_uid}.sock" if self.pod_uid else "dra.sock")

    @property
    def registration(self) -> Path:
        name = f"{self.driver}-{self.pod_uid}-reg.sock" if self.pod_uid else f"{self.driver}-reg.sock"
        return self.registry_dir / name
