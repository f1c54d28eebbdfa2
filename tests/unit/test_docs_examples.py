"""The README and docs/ stay true: their config examples load, their commands exist, their links resolve.

Pure: configs are validated in-process (secret files they name are created in a temporary directory),
commands are looked up in the click command tree and asked for ``--help``, the ``mailroom parse`` example
is run on the sample it names and compared with what the page shows.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from mailroom.cli import cli
from mailroom.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(lang: str) -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for match in FENCE.finditer(page.read_text(encoding="utf-8")):
            if match.group(1) == lang:
                found.append((page.relative_to(ROOT).as_posix(), match.group(2)))
    return found


def _config_examples() -> list[Any]:
    """YAML blocks that are whole mailroom configs (every top-level key is a setting)."""
    examples = []
    for page, text in _blocks("yaml"):
        data = yaml.safe_load(text)
        if isinstance(data, dict) and data and set(data) <= set(Settings.model_fields):
            examples.append(pytest.param(data, id=f"{page}:{next(iter(data))}"))
    return examples


def _with_secret_files(value: Any, secrets: Path) -> Any:
    """The same config with every ``*_file`` path replaced by a real file holding a Base64 secret."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key.endswith("_file") and isinstance(item, str):
                path = secrets / f"{len(list(secrets.iterdir()))}-{Path(item).name}"
                path.write_text("c2VjcmV0LWZvci10ZXN0cw==\n")
                out[key] = str(path)
            else:
                out[key] = _with_secret_files(item, secrets)
        return out
    if isinstance(value, list):
        return [_with_secret_files(item, secrets) for item in value]
    return value


def test_the_pages_have_config_examples() -> None:
    assert len(_config_examples()) >= 3


@pytest.mark.parametrize("example", _config_examples())
def test_config_examples_load(example: dict[str, Any], tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    config = tmp_path / "mailroom.yml"
    config.write_text(yaml.safe_dump(_with_secret_files(example, secrets)))
    load_settings(config, environ={})


def _documented_commands() -> list[Any]:
    """``mailroom ...`` lines of the shell and console examples, as the words that name a command."""
    commands: dict[str, str] = {}
    for page, text in _blocks("sh") + _blocks("console"):
        for line in text.splitlines():
            line = line.removeprefix("$ ").strip()
            if not line.startswith("mailroom "):
                continue
            words = shlex.split(line.split(" #")[0].rstrip("\\ "))
            commands.setdefault(" ".join(words), page)
    return [pytest.param(words, id=f"{page}:{words}") for words, page in commands.items()]


def _command_path(words: list[str]) -> list[str]:
    """The subcommand names in a command line, skipping the group's own options."""
    path: list[str] = []
    command: click.Command = cli
    rest = words[1:]
    while rest and isinstance(command, click.Group):
        word = rest.pop(0)
        if word.startswith("-"):
            option = next((p for p in command.params if word.split("=")[0] in p.opts), None)
            assert option is not None, f"{' '.join(path) or 'mailroom'} has no option {word}"
            if isinstance(option, click.Option) and not option.is_flag and "=" not in word:
                rest.pop(0)
            continue
        sub = command.commands.get(word)
        assert sub is not None, f"no command {' '.join([*path, word])}"
        path.append(word)
        command = sub
    return path


def test_the_pages_show_commands() -> None:
    assert len(_documented_commands()) >= 15


@pytest.mark.parametrize("line", _documented_commands())
def test_documented_commands_exist(line: str) -> None:
    path = _command_path(shlex.split(line))
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output


def test_parse_example_shows_what_parse_prints() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    match = re.search(r"\$ mailroom parse (\S+)\n(\{.*?\n\})\n", page, re.DOTALL)
    assert match, "docs/configuration.md lost its mailroom parse example"
    result = CliRunner().invoke(
        cli, ["parse", str(ROOT / match.group(1))], env={"MAILROOM_INCOMING_ADDRESS": None}
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == json.loads(match.group(2))


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not re.match(r"[a-z]+:", target) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_tests_the_pages_cite_exist() -> None:
    """A guarantee that names its test names one that exists (file, and the function after ``::``)."""
    missing = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for path, name in re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?", text):
            source = ROOT / path
            if not source.is_file():
                missing.append(f"{page.relative_to(ROOT)}: {path}")
            elif name and not re.search(rf"^(?:async )?def {name}\b", source.read_text(), re.MULTILINE):
                missing.append(f"{page.relative_to(ROOT)}: {path}::{name}")
    assert missing == []
