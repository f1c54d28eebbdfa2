"""The ERB in a mail_room.yml, read without running Ruby.

mail_room renders its config file with ERB before parsing the YAML. Two expression shapes are common in
real files and both can be carried over without evaluating anything:

* ``<%= File.read("/etc/gitlab/mailroom/password_incoming_email").strip.to_json %>`` (GitLab's Helm
  chart): a secret kept in a file, which becomes a ``*_file`` reference;
* ``<%= ENV['IMAP_PASSWORD'] %>`` (or ``ENV["X"]``, ``ENV.fetch('X')``): a value from the environment.

Every other expression, and any ``<% code %>`` tag (a loop, as in GitLab's own ``config/mail_room.yml``
template), is refused with its line number: guessing what Ruby would have produced could turn into a
wrong host or a lost secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TAG = re.compile(r"<%(=|-|#)?(.*?)-?%>", re.DOTALL)
_SUFFIXES = r"(?:\s*\.\s*(?:strip|chomp|to_s|to_json|to_i|freeze))*"
_STRING = r"""(?:'([^'\\]*)'|"([^"\\#]*)")"""
_FILE_READ = re.compile(rf"^\s*(?:File|IO)\s*\.\s*read\s*\(?\s*{_STRING}\s*\)?{_SUFFIXES}\s*$")
_ENV = re.compile(
    rf"^\s*ENV\s*(?:\[\s*{_STRING}\s*\]|\.\s*fetch\s*\(\s*{_STRING}\s*(?:,[^)]*)?\)){_SUFFIXES}\s*$"
)
PLACEHOLDER = re.compile(r"__mailroom_erb_(\d+)__")


@dataclass(frozen=True)
class FileRef:
    """``File.read(path)``: the value is the content of ``path``."""

    path: str
    line: int
    source: str


@dataclass(frozen=True)
class EnvRef:
    """``ENV['name']``: the value of an environment variable where mail_room ran."""

    name: str
    line: int
    source: str


@dataclass(frozen=True)
class KeptElsewhere:
    """A secret the source does not hold (GitLab's encrypted settings): ``hint`` says where it is."""

    hint: str


ErbValue = FileRef | EnvRef


class ErbRefused(ValueError):
    """The file holds ERB the import cannot carry over; ``problems`` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def extract(text: str) -> tuple[str, dict[int, ErbValue]]:
    """``text`` with each ``<%= ... %>`` replaced by a placeholder, and what each placeholder stands for.

    Placeholders are plain scalars (``__mailroom_erb_N__``), so the YAML still parses; quoted ERB such as
    ``"<%= ENV['X'] %>"`` keeps its quotes. Comments ``<%# %>`` are dropped.
    """
    values: dict[int, ErbValue] = {}
    problems: list[str] = []

    def replace(match: re.Match[str]) -> str:
        line = text.count("\n", 0, match.start()) + 1
        kind, code = match.group(1), match.group(2).strip()
        source = match.group(0)
        if kind == "#":
            return ""
        if kind != "=":
            problems.append(
                f"line {line}: ERB code {_short(source)} is a template, not a config: import what it renders "
                "(for GitLab's config/mail_room.yml, import gitlab.yml itself)"
            )
            return ""
        value = _classify(code, line, source)
        if value is None:
            problems.append(
                f"line {line}: ERB expression {_short(source)} cannot be read without running Ruby: replace "
                "it by its value, or by File.read(\"/path/to/secret\") or ENV['NAME']"
            )
            return ""
        values[len(values)] = value
        return f"__mailroom_erb_{len(values) - 1}__"

    out = _TAG.sub(replace, text)
    if problems:
        raise ErbRefused(problems)
    return out, values


def _classify(code: str, line: int, source: str) -> ErbValue | None:
    match = _FILE_READ.match(code)
    if match:
        return FileRef(match.group(1) if match.group(1) is not None else match.group(2), line, source)
    match = _ENV.match(code)
    if match:
        name = next(group for group in match.groups() if group is not None)
        return EnvRef(name, line, source)
    return None


def _short(source: str) -> str:
    source = " ".join(source.split())
    return f"`{source}`" if len(source) <= 80 else f"`{source[:77]}...`"
