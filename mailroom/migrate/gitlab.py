"""GitLab's settings -> the mail_room mailboxes GitLab would run, so ``convert`` maps them like any other.

Two sources, both read the way GitLab reads them:

* ``gitlab.yml`` (Omnibus renders it from gitlab.rb; source installs edit it): the ``incoming_email`` and
  ``service_desk_email`` sections of one Rails environment, with the defaults of ``lib/gitlab/mail_room.rb``
  and the mailbox that ``config/mail_room.yml`` renders from them;
* the Helm chart's values: ``global.appConfig.incomingEmail`` / ``serviceDeskEmail``, with the chart's
  defaults and the secret files its mailroom pod mounts under ``/etc/gitlab/mailroom/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mailroom.migrate.convert import GITLAB_API_PATH, GITLAB_JWT_HEADER, GITLAB_JWT_ISSUER, JWT_ALGORITHM
from mailroom.migrate.erb import FileRef, KeptElsewhere
from mailroom.migrate.notes import Report, Severity

SECTIONS = ("incoming_email", "service_desk_email")
HELM_SECTIONS = {"incomingEmail": "incoming_email", "serviceDeskEmail": "service_desk_email"}
HELM_SECRETS_DIR = "/etc/gitlab/mailroom"
# The file names the chart's mailroom pod mounts its Secrets as (password, Graph client secret).
_CHART_FILES = {
    "incoming_email": ("password_incoming_email", "client_id_incoming_email"),
    "service_desk_email": ("password_service_desk", "client_id_service_desk"),
}
GITLAB_WORKER = {
    "incoming_email": "EmailReceiverWorker",
    "service_desk_email": "ServiceDeskEmailReceiverWorker",
}

# lib/gitlab/mail_room.rb's DEFAULT_CONFIG (and config/mail_room.yml's delete_after_delivery default).
_GITLAB_DEFAULTS: dict[str, Any] = {
    "port": 143,
    "ssl": False,
    "start_tls": False,
    "mailbox": "inbox",
    "idle_timeout": 60,
    "expunge_deleted": False,
    "delete_after_delivery": True,
    "delivery_method": "sidekiq",
}
# The chart's values.yaml defaults for both sections.
_HELM_DEFAULTS: dict[str, Any] = {
    "host": "imap.gmail.com",
    "port": 993,
    "ssl": True,
    "startTls": False,
    "deleteAfterDelivery": True,
    "expungeDeleted": False,
    "mailbox": "inbox",
    "idleTimeout": 60,
    "inboxMethod": "imap",
    "pollInterval": 60,
    "deliveryMethod": "webhook",
}


@dataclass(frozen=True)
class GitlabMailbox:
    name: str  # incoming_email | service_desk_email
    address: str | None
    box: dict[str, Any]  # a mail_room mailbox


def from_gitlab_yml(
    data: Mapping[str, Any], rails_env: str, gitlab_url: str | None, report: Report
) -> list[GitlabMailbox]:
    """gitlab.yml's mailboxes: ``data`` is the whole file (environments at the top) or one environment."""
    env = data.get(rails_env)
    settings: Mapping[str, Any] = env if isinstance(env, Mapping) else data
    if not any(section in settings for section in SECTIONS):
        envs = [key for key, value in data.items() if isinstance(value, Mapping)]
        raise LookupError(f"no incoming_email or service_desk_email under {rails_env!r} (found: {envs})")
    boxes = []
    for section in SECTIONS:
        config = {
            **_GITLAB_DEFAULTS,
            **{k: v for k, v in (settings.get(section) or {}).items() if v is not None},
        }
        if not _enabled(config, section, report):
            continue
        box: dict[str, Any] = {
            "email": config.get("user"),
            "password": config.get("password"),
            "host": config.get("host"),
            "port": config["port"],
            "ssl": config["ssl"],
            "start_tls": config["start_tls"],
            "name": config["mailbox"],
            "idle_timeout": config["idle_timeout"],
            "delete_after_delivery": config["delete_after_delivery"],
            "expunge_deleted": config["expunge_deleted"],
            "logger": {"log_path": config.get("log_path", "log/mail_room_json.log")},
            "arbitration_method": "redis",
        }
        if config.get("inbox_method") == "microsoft_graph":
            box["inbox_method"] = "microsoft_graph"
            box["inbox_options"] = dict(config.get("inbox_options") or {})
        if box["password"] is None and box.get("inbox_method") != "microsoft_graph":
            # Omnibus and source installs may keep it in GitLab's encrypted settings instead.
            box["password"] = KeptElsewhere(
                f"not in gitlab.yml (GitLab's encrypted settings hold it: `gitlab-rake gitlab:{section}:"
                "secret:show` shows it)"
            )
        if config["delivery_method"] == "webhook":
            base = str(gitlab_url or config.get("gitlab_url") or "")
            box["delivery_method"] = "postback"
            box["delivery_options"] = {
                "delivery_url": f"{base.rstrip('/')}{GITLAB_API_PATH}{section}" if base else None,
                "content_type": "text/plain",
                "jwt_auth_header": GITLAB_JWT_HEADER,
                "jwt_issuer": GITLAB_JWT_ISSUER,
                "jwt_algorithm": JWT_ALGORITHM,
                "jwt_secret_path": config.get("secret_file") or f".gitlab_{section}_secret",
            }
            if not config.get("secret_file"):
                report.note(
                    section,
                    "secret_file",
                    Severity.ACTION,
                    f"not set: GitLab uses .gitlab_{section}_secret in its Rails root (Omnibus: "
                    f"/var/opt/gitlab/gitlab-rails/etc/ or /opt/gitlab/embedded/service/gitlab-rails/): "
                    "point webhook.secret_file at that file",
                )
        else:
            box["delivery_method"] = "sidekiq"
            box["delivery_options"] = {"worker": GITLAB_WORKER[section]}
        boxes.append(GitlabMailbox(section, config.get("address"), box))
    return boxes


def from_helm_values(data: Mapping[str, Any], gitlab_url: str | None, report: Report) -> list[GitlabMailbox]:
    """The chart's ``global.appConfig`` mailboxes, as its mailroom ConfigMap renders them."""
    app_config = ((data.get("global") or {}).get("appConfig")) or {}
    boxes = []
    for key, section in HELM_SECTIONS.items():
        values = {**_HELM_DEFAULTS, **{k: v for k, v in (app_config.get(key) or {}).items() if v is not None}}
        if not _enabled(values, f"global.appConfig.{key}", report):
            continue
        box: dict[str, Any] = {
            "email": values.get("user"),
            "name": values["mailbox"],
            "delete_after_delivery": values["deleteAfterDelivery"],
            "expunge_deleted": values["expungeDeleted"],
            "logger": {"log_path": (values.get("logger") or {}).get("logPath", "/dev/stdout")},
            "arbitration_method": "redis",
        }
        # The chart mounts each Secret key as a file under /etc/gitlab/mailroom/ in the mailroom pod.
        if values["inboxMethod"] == "microsoft_graph":
            box["inbox_method"] = "microsoft_graph"
            box["inbox_options"] = {
                "tenant_id": values.get("tenantId"),
                "client_id": values.get("clientId"),
                "client_secret": _mounted(
                    values.get("clientSecret"), _CHART_FILES[section][1], f"{key}.clientSecret", report
                ),
                "poll_interval": values["pollInterval"],
                "azure_ad_endpoint": values.get("azureAdEndpoint"),
                "graph_endpoint": values.get("graphEndpoint"),
            }
            box["inbox_options"] = {k: v for k, v in box["inbox_options"].items() if v is not None}
        else:
            box.update(
                host=values["host"],
                port=values["port"],
                ssl=values["ssl"],
                start_tls=values["startTls"],
                password=_mounted(
                    values.get("password"), _CHART_FILES[section][0], f"{key}.password", report
                ),
                idle_timeout=values["idleTimeout"],
            )
        if values["deliveryMethod"] == "webhook":
            box["delivery_method"] = "postback"
            box["delivery_options"] = {
                # The chart points at its Workhorse Service; outside the release only --gitlab-url knows it.
                "delivery_url": f"{gitlab_url.rstrip('/')}{GITLAB_API_PATH}{section}" if gitlab_url else None,
                "content_type": "text/plain",
                "jwt_auth_header": GITLAB_JWT_HEADER,
                "jwt_issuer": GITLAB_JWT_ISSUER,
                "jwt_algorithm": JWT_ALGORITHM,
                "jwt_secret_path": _mounted_path(
                    values.get("authToken"), f"{section}_webhook_secret", f"{key}.authToken", report
                ),
            }
        else:
            box["delivery_method"] = "sidekiq"
            box["delivery_options"] = {"worker": GITLAB_WORKER[section]}
        boxes.append(GitlabMailbox(section, values.get("address"), box))
    return boxes


def _enabled(config: Mapping[str, Any], where: str, report: Report) -> bool:
    if not config.get("enabled"):
        report.note(where, "enabled", Severity.DROPPED, "not enabled: no mailbox")
        return False
    if not config.get("address"):
        report.note(where, "address", Severity.DROPPED, "enabled without an address: GitLab runs no mailbox")
        return False
    return True


def _mounted(secret: Any, file_name: str, option: str, report: Report) -> FileRef:
    """A secret the chart mounts as a file: ``convert`` sees its path, as with the ConfigMap's File.read."""
    return FileRef(_mounted_path(secret, file_name, option, report), 0, "helm")


def _mounted_path(secret: Any, file_name: str, option: str, report: Report) -> str:
    path = f"{HELM_SECRETS_DIR}/{file_name}"
    ref = secret if isinstance(secret, Mapping) else {}
    name, key = ref.get("secret"), ref.get("key")
    what = f"Secret {name!r} key {key!r}" if name else "the Secret the chart generated (shared-secrets job)"
    report.note(
        "global.appConfig",
        option,
        Severity.ACTION,
        f"mount {what} at {path} in the mailroom pod (as the chart's mailroom Deployment does)",
    )
    return path
