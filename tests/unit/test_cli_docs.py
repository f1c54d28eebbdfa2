"""Every option a documented ``mailroom ...`` command line shows exists on that command (the command
paths themselves are checked by test_docs_examples.py)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from mailroom.cli import cli

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(sh|console)\n(.*?)^```", re.MULTILINE | re.DOTALL)
OPTION = re.compile(r"^\[?(--?[A-Za-z][\w-]*)")


def _lines() -> list[pytest.ParameterSet]:
    found = {}
    for page in PAGES:
        for match in FENCE.finditer(page.read_text(encoding="utf-8")):
            for line in match.group(2).splitlines():
                for part in line.removeprefix("$ ").split(" #")[0].split("&&"):
                    part = part.strip().rstrip("\\ ")
                    if part.startswith("mailroom "):
                        found.setdefault(part, page.relative_to(ROOT).as_posix())
    return [pytest.param(line, id=f"{page}:{line[:60]}") for line, page in found.items()]


def _options(command: click.Command) -> set[str]:
    return {name for param in command.params for name in (*param.opts, *param.secondary_opts)} | {
        "-h",
        "--help",
    }


@pytest.mark.parametrize("line", _lines())
def test_documented_options_exist(line: str) -> None:
    command: click.Command = cli
    allowed = _options(cli)
    for word in shlex.split(line)[1:]:
        if isinstance(command, click.Group) and word in command.commands:
            command = command.commands[word]
            allowed |= _options(command)
            continue
        option = OPTION.match(word)
        if option:
            assert option.group(1) in allowed, f"{line}: {command.name} has no option {option.group(1)}"
