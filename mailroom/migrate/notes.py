"""What an import reports: one note per option that changed meaning, was dropped, or needs the operator."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mailroom.errors import MailroomError


class Severity(StrEnum):
    ACTION = "action"  # do this before starting mailroom (create a secret file, check a URL)
    CHANGED = "changed"  # carried over, but mailroom behaves differently
    DROPPED = "dropped"  # not carried over (mailroom has no such option, or does it another way)


@dataclass(frozen=True)
class Note:
    where: str  # the mailbox (or "config" for top-level options)
    option: str  # the source's option name, e.g. "delivery_options.jwt_issuer"
    severity: Severity
    text: str

    def as_line(self) -> str:
        return f"{self.severity.value}: {self.where}: {self.option}: {self.text}"


class ImportRefused(MailroomError):
    """The source cannot be imported as it is; ``problems`` has one line per problem, naming the option."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass
class Report:
    """Notes and problems gathered while converting; problems make the whole import fail."""

    notes: list[Note] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def note(self, where: str, option: str, severity: Severity, text: str) -> None:
        self.notes.append(Note(where, option, severity, text))

    def problem(self, where: str, option: str, text: str) -> None:
        self.problems.append(f"{where}: {option}: {text}")

    def raise_problems(self) -> None:
        if self.problems:
            raise ImportRefused(self.problems)


@dataclass(frozen=True)
class ImportResult:
    """The mailroom config (plain data, ready for YAML) and what the operator must know about it."""

    source_format: str
    config: dict[str, Any]
    notes: tuple[Note, ...]

    def actions(self) -> list[Note]:
        return [note for note in self.notes if note.severity is Severity.ACTION]
