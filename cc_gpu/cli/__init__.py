"""The `cc-gpu` command line: a thin dispatcher over one module per top-level command.

Each command lives in its own module under `cc_gpu.cli` exposing `add_arguments(parser)` and `run(args) -> int`.
The module is imported only when its command runs, so `cc-gpu attest verify` never pays for importing the
Kubernetes client and `cc-gpu discover` never pays for the attestation stack. The CLI modules are the only
place that turns flags into configuration and builds real adapters.

Exit codes: 0 success, 1 the operation ran and said no (a refused bind, rejected evidence), 2 usage or input errors,
130 interrupted (Ctrl-C), 70 an internal error (a bug: the message asks for a report). A command reports a failure by
raising `CliError`; this module prints it as one line on stderr, or with `--json` as one JSON document on stdout:
`{"error": {"type": ..., "message": ...}}`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, Protocol

from cc_gpu import __version__
from cc_gpu.cli._input import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, CliError

# name -> (module, one-line help). Modules are imported lazily, see the module docstring.
COMMANDS: dict[str, tuple[str, str]] = {
    "discover": ("cc_gpu.cli.discover", "list the node's NVIDIA GPUs, their IOMMU groups and CC mode"),
    "vfio": ("cc_gpu.cli.vfio", "inspect, bind and restore a GPU's IOMMU group (admin tool)"),
    "attest": ("cc_gpu.cli.attest", "verify GPU attestation evidence and verdict tokens"),
    "plugin": ("cc_gpu.cli.plugin", "run the DRA kubelet plugin (the node daemon)"),
    "pod-gate": ("cc_gpu.cli.podgate", "give held Kata GPU pods their CDI device annotation, then release them"),
    "keys": ("cc_gpu.cli.keys", "list or rotate the node's verdict-token signing keys"),
    "demo": ("cc_gpu.cli.demo", "run a simulated node end to end and narrate it"),
    "sim": ("cc_gpu.cli.sim", "run the simulated API server and other test doubles"),
    "kata": ("cc_gpu.cli.kata", "check a node's Kata Containers configuration for confidential GPU passthrough"),
}


class CommandModule(Protocol):
    """What a command module provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class _HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default in `--help`, as argparse's ArgumentDefaultsHelpFormatter does, except where the
    help already says it or there is none to show (no `default: None` for an option that is simply off or unset)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_ = action.help or ""
        shown = action.default not in (None, False, [], argparse.SUPPRESS)
        if shown and action.option_strings and "default" not in help_:
            help_ += (" " if help_ else "") + "(default: %(default)s)"
        return help_


class _Parser(argparse.ArgumentParser):
    """argparse that raises a usage error instead of exiting, so `--json` gets its JSON error too; every parser
    (subcommands too: they are built with this class) shows defaults in its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise _ParseError(self, message)


class _ParseError(CliError):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


def _version() -> str:
    """The version and the protocol versions the plugin serves to the kubelet."""
    try:
        from cc_gpu.dra.server import HEALTH_VERSION, SUPPORTED_VERSIONS  # noqa: PLC0415
    except ImportError as e:  # a build without the gRPC stack still says its own version
        return f"cc-gpu {__version__}\nDRA kubelet plugin API: unavailable ({e})"
    return (f"cc-gpu {__version__}\nDRA kubelet plugin API: {', '.join(SUPPORTED_VERSIONS)}\n"
            f"DRA resource health API: {HEALTH_VERSION}")


def _report(prog: str, error: CliError, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"error": {"type": error.kind, "message": str(error)}}))
    else:
        hint = f" (see `{prog} --help`)" if isinstance(error, _ParseError) else ""
        print(f"{prog}: {error}{hint}", file=sys.stderr)
    return error.code


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: cc-gpu <command> [options]   (cc-gpu {__version__})", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `cc-gpu <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cc-gpu` console script and of `python -m cc_gpu`."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(args)
    except KeyboardInterrupt:
        # Commands clean up in their `finally` blocks and context managers on the way out; nothing else to undo.
        print("cc-gpu: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # the last resort the exit-code contract names: a bug, reported as one, exit 70
        print(f"cc-gpu: internal error: {type(e).__name__}: {e} (please report this)", file=sys.stderr)
        if os.environ.get("CC_GPU_DEBUG"):
            import traceback  # noqa: PLC0415

            traceback.print_exc()
        return EXIT_INTERNAL


def _main(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else EXIT_USAGE
    if args[0] in ("--version", "-V"):
        print(_version())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"cc-gpu: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_USAGE
    module_name, help_ = COMMANDS[name]
    try:
        module: CommandModule = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"cc-gpu: command {name!r} is not available in this build", file=sys.stderr)
        return EXIT_USAGE
    parser = _Parser(prog=f"cc-gpu {name}", description=help_)
    module.add_arguments(parser)
    as_json = "--json" in rest
    try:
        parsed = parser.parse_args(rest)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except _ParseError as e:  # JSON only where the command that failed to parse takes --json
        takes_json = any("--json" in action.option_strings for action in e.parser._actions)
        return _report(e.parser.prog, e, as_json and takes_json)
    as_json = bool(getattr(parsed, "json", False))
    try:
        return module.run(parsed)
    except CliError as e:
        return _report(parser.prog + (f" {parsed.action}" if isinstance(getattr(parsed, "action", None), str)
                                      else ""), e, as_json)
    except BrokenPipeError:
        # The reader went away (`cc-gpu discover --json | head`): not a failure of ours. Point stdout at /dev/null so
        # the interpreter's final flush does not raise again (the recipe in Python's signal documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
