"""The exceptions mailroom raises at its boundaries.

    MailroomError
    ├── ConfigError        bad configuration: the CLI prints each problem and exits 2
    ├── ImapError          the IMAP server or the connection to it failed (the watcher reconnects)
    │   ├── ImapAuthError  the server refused our credentials (retried with a capped backoff)
    │   ├── ImapFolderError a folder the configuration names does not exist (after_delivery: move:X)
    │   └── FetchFailed    the server would not hand over these messages (NO, or BYE, to their FETCH)
    ├── EnqueueError       Redis did not acknowledge a job (the batch stays unmarked and is retried)
    ├── TokenError         no OAuth2 access token (endpoint refused the client or grant, or unreachable)
    └── GraphError         Microsoft Graph failed (the Graph watcher backs off and polls again)
        └── GraphStateError  Redis did not read or save a Graph mailbox's delta link

Third-party exceptions are translated where they enter (``raise ... from``), so the rest of the code
only ever catches these. ``event`` is the log event a watcher writes when it retries after one.
"""

from __future__ import annotations


class MailroomError(Exception):
    """Base class of every error mailroom raises on purpose."""

    event = "watcher_error"
    # A watcher reconnects at once after this error, without backoff (mailroom.source.Watcher).
    reconnect_at_once = False


class ConfigError(MailroomError):
    """The configuration is invalid; ``problems`` holds one line per problem, naming the field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class ImapError(MailroomError):
    """The IMAP connection failed or the server answered with an error."""

    event = "imap_connection_failed"


class ImapAuthError(ImapError):
    """The IMAP server refused the login."""

    event = "imap_login_failed"


class ImapFolderError(ImapError):
    """A folder the configuration names (``after_delivery: move:<folder>``) does not exist on the server."""

    event = "after_delivery_folder_missing"


class FetchFailed(ImapError):
    """The server answered a FETCH of ``uids`` with NO or BAD, or said BYE while answering it: one of them
    may be unreadable on the server (mailroom.poison bisects). ``words`` is what the server said;
    ``connection_lost`` is True after a BYE."""

    event = "imap_session_lost"

    def __init__(self, message: str, uids: tuple[int, ...], words: str, connection_lost: bool) -> None:
        super().__init__(message)
        self.uids = uids
        self.words = words
        self.connection_lost = connection_lost
        self.reconnect_at_once = connection_lost  # bisecting needs the next round now (mailroom.source)


class EnqueueError(MailroomError):
    """Redis did not acknowledge the enqueue of a batch."""

    event = "enqueue_failed"


class TokenError(MailroomError):
    """No OAuth2 access token could be had; the message names the endpoint and its error, never a secret."""

    event = "token_failed"


class GraphError(MailroomError):
    """A Microsoft Graph request failed (after honouring throttling)."""

    event = "graph_poll_failed"


class GraphStateError(GraphError):
    """Redis did not read, save or drop a Graph mailbox's delta link."""
