"""One mail_room mailbox (its options as mail_room's README and ``lib/mail_room/mailbox.rb`` define them)
-> one mailroom mailbox, with a note for every option that does not carry over as it was.

gitlab.yml and Helm values are first turned into mail_room mailboxes the way GitLab itself does
(``mailroom.migrate.gitlab``), so every source goes through this one mapping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from mailroom.config import MAX_IDLE_TIMEOUT, clear_text_off_loopback, search_keys
from mailroom.migrate.erb import PLACEHOLDER, EnvRef, ErbValue, FileRef, KeptElsewhere
from mailroom.migrate.notes import Report, Severity

GITLAB_JWT_HEADER = "Gitlab-Mailroom-Api-Request"
GITLAB_JWT_ISSUER = "gitlab-mailroom"
MAIL_ROOM_JWT_ISSUER = "mailroom"  # mail_room's default when jwt_issuer is not given
JWT_ALGORITHM = "HS256"
GITLAB_WORKERS = {
    "EmailReceiverWorker": "incoming_email",
    "ServiceDeskEmailReceiverWorker": "service_desk_email",
}
GITLAB_API_PATH = "/api/v4/internal/mail_room/"
ACTION_MAILBOX_PATH = "/rails/action_mailbox/relay/inbound_emails"

# mail_room's defaults (lib/mail_room/mailbox.rb), for options a file leaves out.
_DEFAULTS: dict[str, Any] = {
    "host": "imap.gmail.com",
    "port": 993,
    "ssl": True,
    "start_tls": False,
    "search_command": "UNSEEN",
    "delivery_method": "postback",
    "delete_after_delivery": False,
    "expunge_deleted": False,
}
_KNOWN = {
    "email", "password", "name", "host", "port", "ssl", "start_tls", "idle_timeout", "search_command",
    "delete_after_delivery", "expunge_deleted", "limit_max_unread", "delivery_method", "delivery_options",
    "delivery_url", "delivery_token", "content_type", "log_path", "location", "delivery_klass",
    "arbitration_method", "arbitration_options", "inbox_method", "inbox_options", "logger",
}  # fmt: skip
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Options:
    """What the operator told ``mailroom import`` (each has a command-line option)."""

    secrets_dir: str = "/run/secrets/mailroom"
    address: str | None = None  # the reply-address template for every mailbox
    gitlab_url: str | None = None  # GitLab's internal API base, for sidekiq delivery or a missing URL
    redis_url: str | None = None
    environ: Mapping[str, str] | None = None  # set: ENV['X'] in non-secret options takes its value now


@dataclass
class Converter:
    """Converts mailboxes one at a time; notes and problems go to ``report``."""

    options: Options
    erb: Mapping[int, ErbValue]
    report: Report = field(default_factory=Report)
    names: set[str] = field(default_factory=set)
    redis_candidates: list[tuple[str, str]] = field(default_factory=list)  # (where, url)

    # -- values -------------------------------------------------------------------------------------

    def plain(self, value: Any, where: str, option: str) -> Any:
        """A non-secret value: ERB ENV references resolved with --env, anything else refused."""
        if not isinstance(value, str) or PLACEHOLDER.search(value) is None:
            return value
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            ref = self.erb[int(match.group(1))]
            if isinstance(ref, FileRef):
                missing.append(
                    f"line {ref.line}: {ref.source} reads a file for a non-secret option: put its value in"
                )
                return ""
            if self.options.environ is None:
                missing.append(
                    f"line {ref.line}: {ref.source} takes ${ref.name} from the environment; mailroom's "
                    f"config has no templating: run the import with --env (where ${ref.name} is set) to "
                    "write its value, or replace the ERB by the value"
                )
                return ""
            if ref.name not in self.options.environ:
                missing.append(f"line {ref.line}: {ref.source}: ${ref.name} is not set (--env)")
                return ""
            return self.options.environ[ref.name]

        resolved = PLACEHOLDER.sub(substitute, value)
        for problem in missing:
            self.report.problem(where, option, problem)
        return _scalar(resolved) if not missing else None

    def secret(self, value: Any, where: str, option: str, file_name: str) -> str | None:
        """A secret -> the file mailroom reads it from. Never returns the secret itself."""
        if value is None:
            return None
        default = str(PurePosixPath(self.options.secrets_dir) / file_name)
        match = PLACEHOLDER.fullmatch(value) if isinstance(value, str) else None
        ref = self.erb[int(match.group(1))] if match is not None else value
        if isinstance(ref, FileRef):
            return ref.path
        if isinstance(ref, KeptElsewhere):
            self.report.note(where, option, Severity.ACTION, f"{ref.hint}: write it to {default} (chmod 600)")
            return default
        if isinstance(ref, EnvRef):
            self.report.note(
                where,
                option,
                Severity.ACTION,
                f"came from ${ref.name} (line {ref.line}); mailroom reads secrets from files: write it "
                f'to {default} (printf %s "${ref.name}" > {default}; chmod 600 {default})',
            )
            return default
        if isinstance(value, str) and PLACEHOLDER.search(value):
            self.report.problem(where, option, "ERB inside a secret's text: replace it by File.read(...)")
            return None
        self.report.note(
            where,
            option,
            Severity.ACTION,
            f"was inline; mailroom never keeps a secret in its config: write it to {default} "
            f"(no other content; a trailing newline is ignored; chmod 600)",
        )
        return default

    # -- one mailbox --------------------------------------------------------------------------------

    def mailbox(
        self, raw: Mapping[str, Any], index: int, name: str | None = None, address: str | None = None
    ) -> dict[str, Any]:
        """``raw``: one mail_room mailbox with its keys' leading colons removed."""
        box = {key: raw[key] for key in raw}
        literal = {
            k: box.get(k) if not PLACEHOLDER.search(str(box.get(k))) else None for k in ("email", "name")
        }
        name = self._unique_name(
            name or _gitlab_section(box) or _name_for(literal["email"], literal["name"], index)
        )
        where = name
        email = self.plain(box.get("email"), where, "email")
        folder = self.plain(box.get("name"), where, "name")
        out: dict[str, Any] = {"name": name}
        for key in sorted(set(box) - _KNOWN):
            self.report.note(where, key, Severity.DROPPED, "not a mail_room mailbox option; ignored")
        graph = str(self.plain(box.get("inbox_method"), where, "inbox_method") or "imap") == "microsoft_graph"
        if graph:
            self._graph(box, out, where, email, folder)
        else:
            self._imap(box, out, where, email, folder)
        self._after_delivery(box, out, where, graph)
        self._search(box, out, where, graph)
        self._delivery(box, out, where)
        relay = str(out.get("webhook", {}).get("url", "")).rstrip("/").endswith(ACTION_MAILBOX_PATH)
        out["address"] = self._address(address, email, where, catch_all=relay)
        self._arbitration(box, where)
        self._logger(box, where)
        if box.get("limit_max_unread"):
            self.report.note(
                where,
                "limit_max_unread",
                Severity.DROPPED,
                "mailroom fetches in chunks of batch_size (default 200), which is what this guarded against",
            )
        return out

    def _unique_name(self, name: str) -> str:
        base, n = name, 2
        while name in self.names:
            name, n = f"{base}-{n}", n + 1
        self.names.add(name)
        return name

    def _imap(self, box: dict[str, Any], out: dict[str, Any], where: str, email: Any, folder: Any) -> None:
        if box.get("inbox_options"):
            self.report.note(where, "inbox_options", Severity.DROPPED, "only used with microsoft_graph")
        host = self.plain(box.get("host", _DEFAULTS["host"]), where, "host")
        out["host"] = host
        if "host" not in box:
            self.report.note(where, "host", Severity.CHANGED, "not given: mail_room's default imap.gmail.com")
        ssl = self.plain(box.get("ssl", _DEFAULTS["ssl"]), where, "ssl")
        start_tls = bool(self.plain(box.get("start_tls", _DEFAULTS["start_tls"]), where, "start_tls"))
        port = self.plain(box.get("port", _DEFAULTS["port"]), where, "port")
        if ssl:
            out["security"] = "tls"
            if start_tls:
                self.report.note(
                    where, "start_tls", Severity.DROPPED, "ssl is on: the connection is TLS already"
                )
            if isinstance(ssl, Mapping):
                self._ssl_params(ssl, out, where)
        elif start_tls:
            out["security"] = "starttls"
        else:
            out["security"] = "none"
            if not _loopback(str(host)):
                out["allow_insecure"] = True
                self.report.note(
                    where,
                    "ssl",
                    Severity.ACTION,
                    "ssl and start_tls are off, so the password travels in clear text, as it did with "
                    "mail_room; mailroom needs allow_insecure: true for that (set). Use ssl or STARTTLS "
                    "if the server offers it",
                )
        default_port = 993 if out["security"] == "tls" else 143
        if port is not None and int(port) != default_port:
            out["port"] = int(port)
        out["username"] = email
        if box.get("password") is None:
            self.report.problem(where, "password", "required for an IMAP mailbox")
        else:
            out["password_file"] = self.secret(box.get("password"), where, "password", f"{where}-password")
        if folder is not None and str(folder) != "INBOX":
            out["folder"] = "INBOX" if str(folder).lower() == "inbox" else folder
        idle = self.plain(box.get("idle_timeout"), where, "idle_timeout")
        if idle is not None:
            idle = float(idle)
            if 0 < idle <= MAX_IDLE_TIMEOUT:
                out["idle_timeout"] = int(idle) if idle.is_integer() else idle
            else:
                self.report.note(
                    where, "idle_timeout", Severity.DROPPED, f"{idle} is out of 1..{MAX_IDLE_TIMEOUT}"
                )

    def _ssl_params(self, ssl: Mapping[str, Any], out: dict[str, Any], where: str) -> None:
        params = {str(k).lstrip(":"): v for k, v in ssl.items()}
        verify = str(params.pop("verify_mode", "peer")).lstrip(":").lower()
        if verify == "none":
            out["verify"] = False
            self.report.note(where, "ssl.verify_mode", Severity.CHANGED, "none: certificate not verified")
        if "ca_file" in params:
            out["ca_file"] = params.pop("ca_file")
        for key in sorted(params):
            self.report.note(where, f"ssl.{key}", Severity.DROPPED, "no such TLS setting in mailroom")

    def _graph(self, box: dict[str, Any], out: dict[str, Any], where: str, email: Any, folder: Any) -> None:
        options = {str(k).lstrip(":"): v for k, v in (box.get("inbox_options") or {}).items()}
        out["kind"] = "graph"
        for key in ("host", "port", "ssl", "start_tls", "password", "idle_timeout"):
            if key in box:
                self.report.note(where, key, Severity.DROPPED, "not used with microsoft_graph")
        graph: dict[str, Any] = {
            "tenant": _text(self.plain(options.get("tenant_id"), where, "inbox_options.tenant_id")),
            "client_id": _text(self.plain(options.get("client_id"), where, "inbox_options.client_id")),
            "client_secret_file": self.secret(
                options.get("client_secret"), where, "inbox_options.client_secret", f"{where}-client-secret"
            ),
            "user": email,
        }
        for key in ("tenant_id", "client_id", "client_secret"):
            if options.get(key) is None:
                self.report.problem(where, f"inbox_options.{key}", "required for microsoft_graph")
        authority = self.plain(options.get("azure_ad_endpoint"), where, "inbox_options.azure_ad_endpoint")
        if authority:
            graph["authority"] = str(authority).rstrip("/")
        endpoint = self.plain(options.get("graph_endpoint"), where, "inbox_options.graph_endpoint")
        if endpoint:
            endpoint = str(endpoint).rstrip("/")
            graph["base_url"] = f"{endpoint}/v1.0"
            graph["scope"] = f"{endpoint}/.default"
        out["graph"] = graph
        out["folder"] = (
            str(folder or "inbox").lower() if str(folder or "inbox").lower() == "inbox" else folder
        )
        interval = self.plain(options.get("poll_interval"), where, "inbox_options.poll_interval")
        if interval is not None and float(interval) > 0:
            out["poll_interval"] = int(interval)
        self.report.note(
            where,
            "inbox_method",
            Severity.CHANGED,
            "read with delta queries (a poll costs what changed), marked read only after the job is queued",
        )
        for key in sorted(set(options) - {"tenant_id", "client_id", "client_secret", "poll_interval",
                                          "azure_ad_endpoint", "graph_endpoint"}):  # fmt: skip
            self.report.note(where, f"inbox_options.{key}", Severity.DROPPED, "not a mail_room Graph option")

    def _address(self, address: str | None, email: Any, where: str, catch_all: bool = False) -> str:
        if self.options.address is not None:
            return self.options.address
        if address is not None:
            return address
        if catch_all and "@" in str(email or ""):
            # Action Mailbox routes by the recipients itself: the mailbox is a catch-all without keys.
            return str(email)
        local, at, domain = str(email or "").partition("@")
        if not at:
            local, domain = "incoming", "example.com"
        local = local.split("+", 1)[0]
        guess = f"{local}+%{{key}}@{domain}"
        self.report.note(
            where,
            "address",
            Severity.ACTION,
            f"mail_room has no reply-address template; guessed {guess} from the login: check it (the reply "
            "key recorded with each job and in `mailroom history` is read with it), or pass --address",
        )
        return guess

    def _after_delivery(self, box: dict[str, Any], out: dict[str, Any], where: str, graph: bool) -> None:
        delete = bool(self.plain(box.get("delete_after_delivery", False), where, "delete_after_delivery"))
        expunge = bool(self.plain(box.get("expunge_deleted", False), where, "expunge_deleted"))
        if not delete:
            if expunge:
                self.report.note(where, "expunge_deleted", Severity.DROPPED, "nothing is deleted")
            return
        out["after_delivery"] = "delete"
        if not graph and not expunge:
            out["expunge_deleted"] = False  # flagged \Deleted, expunged by the server's policy, as before

    def _search(self, box: dict[str, Any], out: dict[str, Any], where: str, graph: bool) -> None:
        command = box.get("search_command", _DEFAULTS["search_command"])
        if graph:
            return
        command = " ".join(str(self.plain(command, where, "search_command")).split())
        deletes = out.get("after_delivery") == "delete"
        if command.upper() == "UNSEEN":
            # With seen, UNSEEN is what mailroom looks for anyway; deleting, it would also take mail a
            # person had read, which mail_room's UNSEEN left alone.
            if deletes:
                out["search"] = "UNSEEN"
            return
        if command.upper() == "NEW":
            out["search"] = "UNSEEN"
            self.report.note(
                where,
                "search_command",
                Severity.CHANGED,
                "NEW (RECENT UNSEEN) -> UNSEEN: \\Recent goes to one session only, so mail another session "
                "saw first would never be fetched",
            )
            return
        try:
            search_keys(command)
        except ValueError as exc:
            self.report.note(where, "search_command", Severity.DROPPED, f"{command!r}: {exc}")
            return
        out["search"] = (
            f"UNSEEN {command}" if deletes and "UNSEEN" not in command.upper().split() else command
        )

    def _delivery(self, box: dict[str, Any], out: dict[str, Any], where: str) -> None:
        method = str(self.plain(box.get("delivery_method", _DEFAULTS["delivery_method"]), where, "x") or "")
        options = {str(k).lstrip(":"): v for k, v in (box.get("delivery_options") or {}).items()}
        for key in ("delivery_url", "delivery_token", "content_type", "log_path", "location"):
            if key in box:  # mail_room also reads these at the top of a mailbox
                options.setdefault(key, box[key])
        if box.get("delivery_klass"):
            self.report.problem(
                where, "delivery_klass", "a Ruby class cannot run in mailroom: write a handler"
            )
            return
        if method == "postback":
            self._postback(options, out, where)
        elif method == "sidekiq":
            self._sidekiq(options, out, where)
        elif method in ("logger", "noop"):
            out["handler"] = "log"
            self.report.note(
                where,
                "delivery_method",
                Severity.CHANGED,
                f"{method}: handler log writes one JSON line per message (ids, key, sender), never the body",
            )
            for key in sorted(options):
                self.report.note(where, f"delivery_options.{key}", Severity.DROPPED, "no such log option")
        else:
            self.report.problem(
                where,
                "delivery_method",
                f"{method!r} has no mailroom counterpart: write a handler (docs/handlers.md) and set handler",
            )

    def _postback(self, options: dict[str, Any], out: dict[str, Any], where: str) -> None:
        url = self.plain(options.pop("delivery_url", None) or options.pop("url", None), where, "delivery_url")
        if url is None:
            self.report.problem(
                where,
                "delivery_options.delivery_url",
                "no URL to deliver to: pass --gitlab-url with GitLab's internal URL (Omnibus: "
                "http://127.0.0.1:8080; the Helm chart: its Workhorse Service, "
                "http://RELEASE-webservice-default.NAMESPACE.svc:8181)",
            )
            return
        webhook: dict[str, Any] = {"url": self._http_url(str(url), where, "delivery_options.delivery_url")}
        if clear_text_off_loopback(webhook["url"]):
            webhook["allow_insecure"] = True  # mailroom refuses clear text off loopback unless told
            self.report.note(
                where,
                "delivery_options.delivery_url",
                Severity.CHANGED,
                "http:// to another host: allow_insecure: true written (messages and their JWT travel "
                "in clear text, as with mail_room); prefer https://",
            )
        out["handler"] = "webhook"
        out["webhook"] = webhook
        self._jwt(options, webhook, where)
        token = options.pop("delivery_token", None) or options.pop("token", None)
        username = options.pop("username", None) or options.pop("delivery_username", None)
        password = options.pop("password", None) or options.pop("delivery_password", None)
        if token is not None:
            # Faraday's token auth: "Authorization: Token TOKEN" (mail_room prefers it to basic auth).
            webhook["token_file"] = self.secret(
                token, where, "delivery_options.delivery_token", f"{where}-token"
            )
            webhook["token_scheme"] = "Token"  # noqa: S105 - a scheme name, not a secret
            if username is not None:
                self.report.note(
                    where, "delivery_options.username", Severity.DROPPED, "mail_room used the token instead"
                )
        elif username is not None and password is not None:
            webhook["username"] = self.plain(username, where, "delivery_options.username")
            webhook["password_file"] = self.secret(
                password, where, "delivery_options.password", f"{where}-webhook-password"
            )
        if not {"secret_file", "token_file", "password_file"} & set(webhook):
            self.report.problem(
                where,
                "delivery_options",
                "the postback sends no authentication: mailroom's webhook always authenticates its requests "
                "(jwt_auth_header + jwt_secret_path, delivery_token, or username + password)",
            )
        content_type = options.pop("content_type", None)
        if content_type is not None:
            if str(content_type) != "text/plain":
                webhook["content_type"] = str(content_type)
        elif str(url).rstrip("/").endswith(ACTION_MAILBOX_PATH):
            webhook["content_type"] = "message/rfc822"
            self.report.note(
                where,
                "delivery_options.content_type",
                Severity.CHANGED,
                "not given (Faraday sent application/x-www-form-urlencoded, which Action Mailbox's relay "
                "ingress refuses with 415): message/rfc822",
            )
        else:
            self.report.note(
                where,
                "delivery_options.content_type",
                Severity.CHANGED,
                "not given (Faraday sent application/x-www-form-urlencoded): mailroom sends text/plain",
            )
        for key in sorted(options):
            self.report.note(where, f"delivery_options.{key}", Severity.DROPPED, "not a postback option")

    def _jwt(self, options: dict[str, Any], webhook: dict[str, Any], where: str) -> None:
        """mail_room signs only when both the header and the secret path are given."""
        header = options.pop("jwt_auth_header", None)
        secret_path = options.pop("jwt_secret_path", None)
        issuer = options.pop("jwt_issuer", None) or MAIL_ROOM_JWT_ISSUER
        algorithm = str(options.pop("jwt_algorithm", None) or JWT_ALGORITHM)
        if header is None or secret_path is None:
            if header is not None or secret_path is not None:
                self.report.note(
                    where, "delivery_options.jwt_*", Severity.DROPPED, "mail_room signs only with both "
                    "jwt_auth_header and jwt_secret_path: no JWT, as before",
                )  # fmt: skip
            return
        webhook["secret_file"] = str(self.plain(secret_path, where, "delivery_options.jwt_secret_path"))
        if str(header) != GITLAB_JWT_HEADER:
            webhook["jwt_header"] = str(header)
        if str(issuer) != GITLAB_JWT_ISSUER:
            webhook["jwt_issuer"] = str(issuer)
        if algorithm not in ("HS256", "HS384", "HS512"):
            self.report.problem(
                where, "delivery_options.jwt_algorithm", f"{algorithm!r}: mailroom signs with HS256/384/512"
            )
        elif algorithm != JWT_ALGORITHM:
            webhook["jwt_algorithm"] = algorithm

    def _sidekiq(self, options: dict[str, Any], out: dict[str, Any], where: str) -> None:
        worker = str(options.get("worker") or "")
        redis_url = options.get("redis_url")
        if redis_url:
            self.redis_candidates.append((where, self._redis(options, where, "delivery_options")))
        path = GITLAB_WORKERS.get(worker)
        if path is None:
            self.report.problem(
                where,
                "delivery_method",
                f"sidekiq (worker {worker or '?'}): mailroom queues RQ jobs for Python handlers, not Sidekiq "
                "jobs: write a handler (docs/handlers.md), or deliver by postback",
            )
            return
        if self.options.gitlab_url is None:
            self.report.problem(
                where,
                "delivery_method",
                f"sidekiq ({worker}): mailroom delivers to GitLab through its API (the webhook delivery): "
                "pass --gitlab-url with GitLab's internal URL (e.g. http://127.0.0.1:8080)",
            )
            return
        url = self.options.gitlab_url.rstrip("/") + GITLAB_API_PATH + path
        out["handler"] = "webhook"
        out["webhook"] = {
            "url": url,
            "secret_file": str(PurePosixPath(self.options.secrets_dir) / f"{where}-webhook"),
        }
        self.report.note(
            where,
            "delivery_method",
            Severity.ACTION,
            f"sidekiq ({worker}) becomes GitLab's webhook delivery to {url}: set {path}'s delivery_method to "
            f"webhook in GitLab and give it and mailroom the same Base64 secret "
            f"({out['webhook']['secret_file']}; GitLab's {path}.secret_file)",
        )
        for key in sorted(set(options) - {"worker", "redis_url", "sentinels", "queue", "namespace"}):
            self.report.note(where, f"delivery_options.{key}", Severity.DROPPED, "a Sidekiq option")

    def _http_url(self, url: str, where: str, option: str) -> str:
        if url.startswith(("http://", "https://")):
            return url
        if self.options.gitlab_url is not None and GITLAB_API_PATH in url:
            fixed = self.options.gitlab_url.rstrip("/") + GITLAB_API_PATH + url.split(GITLAB_API_PATH, 1)[1]
            self.report.note(where, option, Severity.CHANGED, f"{url!r} -> {fixed} (--gitlab-url)")
            return fixed
        self.report.problem(
            where, option, f"{url!r} is not an http(s) URL: pass --gitlab-url with GitLab's internal URL"
        )
        return url

    def _arbitration(self, box: dict[str, Any], where: str) -> None:
        method = box.get("arbitration_method")
        options = {str(k).lstrip(":"): v for k, v in (box.get("arbitration_options") or {}).items()}
        if method in (None, "noop"):
            return
        if options.get("redis_url"):
            self.redis_candidates.append((where, self._redis(options, where, "arbitration_options")))
        self.report.note(
            where,
            "arbitration_method",
            Severity.DROPPED,
            f"{method}: mailroom never queues a message twice (a guard key per message, in the same Redis "
            "transaction as its job); with several replicas, set lease_ttl so only one fetches each mailbox",
        )

    def _redis(self, options: dict[str, Any], where: str, option: str) -> str:
        url = str(self.plain(options.get("redis_url"), where, f"{option}.redis_url") or "")
        if url.startswith("unix:"):
            return "unix://" + url.removeprefix("unix:").removeprefix("//")
        parts = urlsplit(url)
        if parts.password:
            self.report.note(
                where,
                f"{option}.redis_url",
                Severity.ACTION,
                "has a password, left out of the config: give the whole URL as MAILROOM_REDIS_URL",
            )
        host = parts.hostname or "127.0.0.1"
        db = parts.path.strip("/") or "0"
        sentinels = options.get("sentinels") or []
        if sentinels:
            nodes = ",".join(
                f"{s.get('host', s.get(':host'))}:{s.get('port', s.get(':port', 26379))}" for s in sentinels
            )
            return f"redis+sentinel://{nodes}/{quote(unquote(host))}/{db}"
        user = f"{parts.username}@" if parts.username and not parts.password else ""
        return f"{parts.scheme or 'redis'}://{user}{host}:{parts.port or 6379}/{db}"

    def _logger(self, box: dict[str, Any], where: str) -> None:
        logger = box.get("logger") or {}
        path = (logger.get("log_path") or logger.get(":log_path")) if isinstance(logger, Mapping) else None
        if path and str(path).lower() not in ("/dev/stdout", "stdout", ":stdout"):
            self.report.note(
                where,
                "logger.log_path",
                Severity.DROPPED,
                f"{path}: mailroom logs JSON lines to stdout; redirect it, or let the supervisor collect it",
            )


def _scalar(value: str) -> Any:
    """An ERB-substituted text, typed as YAML would type it (ports and flags)."""
    if value.isdigit():
        return int(value)
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _text(value: Any) -> str | None:
    """Ids YAML may have read as numbers (``tenant_id: 12345``) are text to mailroom."""
    return None if value is None else str(value)


def _loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1")


def _gitlab_section(box: Mapping[str, Any]) -> str | None:
    """incoming_email / service_desk_email for a mailbox GitLab's own template rendered."""
    options = box.get("delivery_options")
    url = options.get("delivery_url") if isinstance(options, Mapping) else None
    if isinstance(url, str) and GITLAB_API_PATH in url:
        section = url.rsplit("/", 1)[-1]
        return section if section in GITLAB_WORKERS.values() else None
    return None


def _name_for(email: Any, folder: Any, index: int) -> str:
    local = str(email or f"mailbox{index}").split("@", 1)[0]
    name = local if str(folder or "inbox").lower() == "inbox" else f"{local}-{folder}"
    return _NAME_UNSAFE.sub("-", name).strip("-") or f"mailbox{index}"
