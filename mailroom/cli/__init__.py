"""The ``mailroom`` command: a thin shell over the library, so whatever it does a program can do.

Each module here adds its subcommands to the group in ``base``; importing them registers them.
"""

from __future__ import annotations

from mailroom.cli import (
    core,  # noqa: F401 - registers the commands
    migrate,  # noqa: F401 - registers `mailroom import`
    ops,  # noqa: F401 - registers the operators' commands
    provider,  # noqa: F401 - registers the commands
)
from mailroom.cli.base import cli


def main() -> None:
    cli(prog_name="mailroom")


__all__ = ["cli", "main"]
