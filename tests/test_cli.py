"""The dispatcher's contract: usage on no arguments, exit 2 on unknown commands, version."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cc_gpu import __version__
from cc_gpu.cli import main
from cc_gpu.dra.server import HEALTH_VERSION, SUPPORTED_VERSIONS


def test_no_arguments_prints_usage_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("discover", "vfio", "attest", "plugin", "demo"):
        assert name in out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_python_dash_m_reports_version_and_protocols(flag: str) -> None:
    """The version first, then the DRA gRPC services the plugin registers with the kubelet (from the server itself)."""
    out = subprocess.run([sys.executable, "-m", "cc_gpu", flag], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == f"cc-gpu {__version__}"
    for service in (*SUPPORTED_VERSIONS, HEALTH_VERSION):
        assert service in out.stdout


def test_a_closed_pipe_is_not_an_error() -> None:
    """`cc-gpu discover --json | head -1` ends quietly, as Unix tools do: here the reader is gone before any write."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "cc_gpu", "discover", "--sim", "dgx-h100", "--json"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
