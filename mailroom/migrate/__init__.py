"""``mailroom import``: a mail_room config, GitLab's gitlab.yml or the GitLab Helm chart's values ->
a mailroom config, with a note for every option that did not carry over as it was.

    from mailroom.migrate import Options, import_file, render

    result = import_file(Path("mail_room.yml"), Options(secrets_dir="/run/secrets/mailroom"))
    Path("mailroom.yml").write_text(render(result))
    for note in result.notes:
        print(note.as_line())

Secrets are never copied into the result: an inline password becomes a ``password_file`` the operator
creates (an ``action`` note says where), a ``File.read`` in the ERB stays that file, and the import never
reads or writes a secret itself. Anything it cannot map safely raises :class:`ImportRefused`, one line per
problem, and nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from mailroom.migrate import gitlab
from mailroom.migrate.convert import Converter, Options
from mailroom.migrate.erb import ErbRefused, extract
from mailroom.migrate.notes import ImportRefused, ImportResult, Note, Report, Severity

__all__ = [
    "ImportRefused",
    "ImportResult",
    "Note",
    "Options",
    "Severity",
    "SourceFormat",
    "import_file",
    "import_text",
    "render",
]

SourceFormat = Literal["auto", "mail_room", "gitlab", "helm"]
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def import_file(
    path: Path, options: Options, source: SourceFormat = "auto", rails_env: str = "production"
) -> ImportResult:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportRefused([f"{path}: {getattr(exc, 'strerror', None) or exc}"]) from None
    return import_text(text, options, source, rails_env)


def import_text(
    text: str, options: Options, source: SourceFormat = "auto", rails_env: str = "production"
) -> ImportResult:
    try:
        plain, erb = extract(text)
    except ErbRefused as exc:
        raise ImportRefused(exc.problems) from None
    try:
        data = yaml.safe_load(plain)
    except yaml.YAMLError as exc:
        raise ImportRefused([f"not valid YAML: {exc}".replace("\n", " ")]) from None
    data = _without_colons(data)
    if not isinstance(data, Mapping):
        raise ImportRefused(["the top level must be a mapping (mail_room.yml, gitlab.yml or Helm values)"])
    kind = _detect(data) if source == "auto" else source
    report = Report()
    converter = Converter(options, erb, report)
    mailboxes: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    if kind == "mail_room":
        boxes = data.get("mailboxes")
        if not isinstance(boxes, list) or not boxes:
            raise ImportRefused(["mailboxes: a mail_room config lists its mailboxes under :mailboxes:"])
        for index, box in enumerate(boxes):
            if not isinstance(box, Mapping):
                report.problem(f"mailboxes[{index}]", "", "not a mapping of options")
                continue
            mailboxes.append(converter.mailbox(box, index))
        _health_check(data, config, report)
        for key in sorted(set(data) - {"mailboxes", "health_check"}):
            report.note("config", key, Severity.DROPPED, "not a mail_room option")
    elif kind in ("gitlab", "helm"):
        try:
            found = (
                gitlab.from_gitlab_yml(data, rails_env, options.gitlab_url, report)
                if kind == "gitlab"
                else gitlab.from_helm_values(data, options.gitlab_url, report)
            )
        except LookupError as exc:
            raise ImportRefused([str(exc.args[0])]) from None
        if not found:
            raise ImportRefused([*report.problems, "no enabled mailbox to import (see the notes)"])
        for index, mailbox in enumerate(found):
            mailboxes.append(converter.mailbox(mailbox.box, index, mailbox.name, mailbox.address))
        if kind == "helm":
            config["http_port"] = 8080  # where the chart's probes and the ServiceMonitor look
            report.note(
                "config",
                "health_check",
                Severity.CHANGED,
                "the chart's mailroom pod answers on 8080: mailroom serves /healthz, /readyz and /metrics "
                "there",
            )
    else:
        raise ImportRefused([f"unknown source format {kind!r}"])
    report.raise_problems()
    result: dict[str, Any] = {"redis_url": _redis_url(options, converter, report), **config}
    result["mailboxes"] = [_ordered(box) for box in mailboxes]
    return ImportResult(kind, result, tuple(report.notes))


def render(result: ImportResult, source: str = "") -> str:
    """The config as YAML, headed by what to do before starting mailroom with it."""
    lines = [
        f"# mailroom config written by `mailroom import` from {source or 'a'} {result.source_format} config."
    ]
    lines.append("# docs/migrating-from-mail_room.md maps every mail_room option; check it with")
    lines.append("# `mailroom --config THIS_FILE check-config` once the secret files below exist.")
    actions = result.actions()
    if actions:
        lines.append("#")
        lines.append("# Before starting mailroom:")
        for note in actions:
            lines.append(f"# - {note.where}: {note.option}: {note.text}")
    body = yaml.safe_dump(result.config, sort_keys=False, allow_unicode=True, width=110)
    return "\n".join(lines) + "\n" + body


def _detect(data: Mapping[str, Any]) -> str:
    if "mailboxes" in data:
        return "mail_room"
    app_config = data.get("global", {}).get("appConfig") if isinstance(data.get("global"), Mapping) else None
    if isinstance(app_config, Mapping):
        return "helm"
    envs = [data, *(value for value in data.values() if isinstance(value, Mapping))]
    if any(section in env for env in envs for section in gitlab.SECTIONS):
        return "gitlab"
    raise ImportRefused(
        [
            "not a config this import knows: a mail_room.yml has :mailboxes:, a gitlab.yml has "
            "incoming_email / service_desk_email, Helm values have global.appConfig.incomingEmail"
        ]
    )


def _without_colons(value: Any) -> Any:
    """mail_room's keys are Ruby symbols (``:email:`` -> ``":email"``); GitLab's are plain strings."""
    if isinstance(value, Mapping):
        return {str(key).lstrip(":"): _without_colons(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_colons(item) for item in value]
    return value


def _health_check(data: Mapping[str, Any], config: dict[str, Any], report: Report) -> None:
    health = data.get("health_check")
    if not isinstance(health, Mapping):
        return
    if health.get("port") is not None:
        config["http_port"] = int(health["port"])
    report.note(
        "config",
        "health_check",
        Severity.CHANGED,
        "mailroom serves /healthz (alive), /readyz (logged in, Redis up) and /metrics on http_port, on every "
        "interface (mail_room answered / on its address)",
    )


def _redis_url(options: Options, converter: Converter, report: Report) -> str:
    if options.redis_url is not None:
        return options.redis_url
    if converter.redis_candidates:
        where, url = converter.redis_candidates[0]
        report.note(
            "config",
            "redis_url",
            Severity.ACTION,
            f"{url}, from {where}'s mail_room Redis: mailroom keeps its queue, guard keys and history there; "
            "pass --redis-url for a Redis of its own (with appendonly yes)",
        )
        return url
    report.note(
        "config",
        "redis_url",
        Severity.ACTION,
        f"not known from this source: {DEFAULT_REDIS_URL} written; pass --redis-url (mailroom keeps its "
        "queue, guard keys and history there; run it with appendonly yes)",
    )
    return DEFAULT_REDIS_URL


_ORDER = (
    "name", "kind", "host", "port", "security", "allow_insecure", "verify", "ca_file", "username",
    "password_file", "folder", "graph", "address", "queue", "handler", "webhook", "after_delivery",
    "expunge_deleted", "search", "idle_timeout", "poll_interval",
)  # fmt: skip


def _ordered(box: Mapping[str, Any]) -> dict[str, Any]:
    out = {key: box[key] for key in _ORDER if key in box}
    out.update({key: value for key, value in box.items() if key not in out})
    return out
