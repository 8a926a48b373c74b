"""README.md and `--help` agree: the same options for every command, every default shown in help.

The README's "Command-line reference" section has one table per command (a `####` heading naming the command, or
several for the shared host-selection options); its first column names the options. Both directions are checked:
an option `--help` has and the reference lacks is undocumented, an option the reference names and the parser lacks
is documentation of something that does not exist. Every `cc-gpu ...` command line in the code blocks of README.md,
deploy/README.md, deploy/examples/README.md and kata/README.md must also use only options its command has.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from cc_gpu.cli import COMMANDS, _Parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
# Documents whose `cc-gpu` command lines must use real options (the reference itself lives in README.md).
GUIDES = [README, REPO / "deploy" / "README.md", REPO / "deploy" / "examples" / "README.md",
          REPO / "kata" / "README.md"]
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])\b")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command path (`attest bundle import`) that takes options -> its parser."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, f"{path} {name}")
        if not subs:
            out[path] = parser

    for name, (module, _) in COMMANDS.items():
        parser = _Parser(prog=f"cc-gpu {name}")
        importlib.import_module(module).add_arguments(parser)
        walk(parser, name)
    return out


PARSERS = _parsers()


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}


def _reference() -> dict[str, set[str]]:
    text = README.read_text()
    start = text.index("## Command-line reference")
    section = text[start:text.index("\n## ", start + 1)]
    documented: dict[str, set[str]] = {}
    for block in re.split(r"\n#### ", section)[1:]:
        heading, _, body = block.partition("\n")
        commands = re.findall(r"`cc-gpu ([a-z -]+)`", heading)
        assert commands, f"reference heading names no command: {heading!r}"
        flags = {m.group(1) for row in body.splitlines() if row.startswith("| `")
                 for m in [re.match(r"\| `(--?[a-zA-Z][\w-]*)", row)] if m}
        for command in commands:
            documented.setdefault(command, set()).update(flags)
    return documented


REFERENCE = _reference()


def test_every_command_with_options_has_a_reference_entry() -> None:
    takes_options = {path for path, parser in PARSERS.items() if _options(parser)}
    assert takes_options <= set(REFERENCE), sorted(takes_options - set(REFERENCE))
    assert set(REFERENCE) <= set(PARSERS), sorted(set(REFERENCE) - set(PARSERS))


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_help_and_readme_name_the_same_options(command: str) -> None:
    in_help = _options(PARSERS[command])
    documented = REFERENCE.get(command, set())
    assert not in_help - documented, f"in `cc-gpu {command} --help` but not in README: {sorted(in_help - documented)}"
    assert not documented - in_help, f"in README but not in `cc-gpu {command}`: {sorted(documented - in_help)}"


def _readme_command_lines() -> list[str]:
    """Every `cc-gpu ...` command in the guides' code blocks, continuation lines joined."""
    text = "\n".join(guide.read_text() for guide in GUIDES)
    lines: list[str] = []
    for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            for m in re.finditer(r"(?:^|[\s;|&(`$])cc-gpu ([^;|&)`#]*)", line):
                lines.append(m.group(1))
    return lines


def _command_of(words: list[str]) -> str | None:
    for n in range(len(words), 0, -1):
        path = " ".join(words[:n])
        if path in PARSERS:
            return path
    return None


def test_every_readme_command_line_uses_options_its_command_has() -> None:
    lines = _readme_command_lines()
    assert len(lines) > 10  # the extraction finds the README's examples
    wrong = []
    for line in lines:
        words = [w for w in line.split() if not w.startswith(("-", "[", "<", "$", "{"))][:3]
        command = _command_of(words)
        if command is None:
            continue  # `cc-gpu --version`, or prose like `cc-gpu <command>`
        unknown = {f for f in FLAG.findall(line)} - _options(PARSERS[command]) - {"-h", "--help"}
        if unknown:
            wrong.append(f"cc-gpu {line.strip()}: {sorted(unknown)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_help_shows_every_default(command: str) -> None:
    parser = PARSERS[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS):
            continue
        shown = formatter._expand_help(action) if action.help else ""
        assert "default" in shown, f"cc-gpu {command} {action.option_strings[0]}: help hides its default"
        assert str(action.default) in shown or "default" in (action.help or ""), shown
