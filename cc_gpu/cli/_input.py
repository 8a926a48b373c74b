"""Typed command-line errors and the argparse types that validate a user's input where it enters.

A command raises `CliError` (or `Refusal`) instead of printing and returning a code, so the dispatcher is the one place
that turns a failure into output: one line on stderr, or with `--json` one `{"error": {"type", "message"}}` document
on stdout. Every argparse `type=` here raises `argparse.ArgumentTypeError`, which argparse reports as a usage error
naming the flag, so a bad number, port, enum, PCI address or directory never reaches the code that would trip on it.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

EXIT_REFUSED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 2, 70, 130


class CliError(Exception):
    """A failure to report to the user; `code` is the exit status, `kind` the JSON error type."""

    def __init__(self, message: str, *, code: int = EXIT_USAGE, kind: str = "UsageError") -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind


class Refusal(CliError):
    """The operation ran and said no (exit 1)."""

    def __init__(self, message: str, *, kind: str = "Refused") -> None:
        super().__init__(message, code=EXIT_REFUSED, kind=kind)


def port(text: str) -> int:
    """A TCP port, 0 to 65535 (0: pick a free one, or off, as the flag says)."""
    value = integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 0 to 65535, got {text!r}")
    return value


def integer(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def nonnegative_seconds(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds of at least 0, got {text!r}")
    return value


_HEX4 = re.compile(r"^(?:0x)?[0-9a-fA-F]{4}$")


def hex_id(text: str) -> str:
    """A 16-bit PCI vendor or class id as 4 hex digits (an optional 0x is dropped)."""
    if not _HEX4.match(text):
        raise argparse.ArgumentTypeError(f"expected a 16-bit PCI id as 4 hex digits (e.g. 10de), got {text!r}")
    return text.lower().removeprefix("0x")


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def node_name(text: str) -> str:
    """A Kubernetes Node name: a DNS subdomain (RFC 1123), at most 253 characters."""
    if len(text) > 253 or not _DNS_SUBDOMAIN.match(text):
        raise argparse.ArgumentTypeError(
            f"expected a Kubernetes node name (lowercase letters, digits, '-' and '.'), got {text!r}")
    return text


def directory(text: str) -> Path:
    """A directory that may not exist yet, but is not a file."""
    path = Path(text)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "" if existing == path else f" ({str(existing)!r} is a file)"
        raise argparse.ArgumentTypeError(f"expected a directory, but {text!r} cannot be one{where}")
    return path


def existing_directory(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"expected an existing directory, got {text!r}")
    return path


def input_file(text: str) -> Path:
    """A readable regular file ('-' is passed through for the flags that read stdin)."""
    path = Path(text)
    if text == "-":
        return path
    if not path.exists():
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: No such file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"expected a regular file, got {text!r}")
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {e.strerror}") from None
    return path


def output_file(text: str) -> Path:
    """A file to write: its directory must exist and the path must not be a directory."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file to write, but {text!r} is a directory")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the directory of {text!r} does not exist")
    return path


def output_path(text: str) -> Path:
    """A file to write, its missing directories created by the command: only a directory in its place is refused."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file to write, but {text!r} is a directory")
    return path


def url(text: str) -> str:
    from urllib.parse import urlsplit  # noqa: PLC0415

    try:
        parts = urlsplit(text)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {text!r}")
    return text
