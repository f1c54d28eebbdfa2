"""One IMAP session: the only module that imports imapclient.

A thin layer over the protocol that speaks in UIDs and translates every imapclient, imaplib, socket and
TLS exception into ImapError (ImapAuthError for a refused login), so the watcher above it reasons about
one kind of failure.
"""

from __future__ import annotations

import ast
import imaplib
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import LoginError
from imapclient.util import to_bytes

from mailroom.config import AfterDeliveryAction, AuthMethod, ImapMailbox, MailboxKind, Security
from mailroom.errors import FetchFailed, ImapAuthError, ImapError, ImapFolderError, TokenError
from mailroom.imap import idling, wire
from mailroom.oauth2 import OAUTHBEARER, TokenSource, choose_mechanism, token_source_for
from mailroom.source import SourceMessage

SEEN = b"\\Seen"
DELETED = b"\\Deleted"
# A message too large to queue whole stays where it is, flagged so no SEARCH offers it again.
PARKED = "$MailroomParked"
# How long DONE may take when we are stopping anyway.
_STOPPING_DONE_TIMEOUT = 1.0
# Untagged responses that mean "the mailbox changed, look again".
_ACTIVITY = frozenset({b"EXISTS", b"RECENT"})


@dataclass(frozen=True)
class FolderState:
    uidvalidity: int
    uidnext: int | None
    exists: int


@contextmanager
def _translated(action: str, uids: Sequence[int] = ()) -> Iterator[None]:
    """imapclient's, imaplib's and the socket's exceptions as ImapError; with ``uids`` (a FETCH of them),
    a NO, BAD or BYE in answer as FetchFailed."""
    try:
        yield
    except (wire.Refused, wire.Bye) as exc:
        if not uids:
            raise ImapError(f"{action} failed: {_one_line(exc)}") from exc
        raise FetchFailed(
            f"{action} of {len(uids)} message(s) failed: {_one_line(exc)}",
            tuple(uids),
            " ".join(exc.text.split())[:300],
            connection_lost=isinstance(exc, wire.Bye),
        ) from exc
    except LoginError as exc:
        raise ImapAuthError(f"login refused: {_one_line(exc)}") from exc
    except (imaplib.IMAP4.error, OSError, ValueError) as exc:
        # imaplib.IMAP4.error covers imapclient's errors and aborts; OSError covers socket, timeout and TLS.
        raise ImapError(f"{action} failed: {type(exc).__name__}: {_one_line(exc)}") from exc


@contextmanager
def _imapclient_refusals(imap: imaplib.IMAP4) -> Iterator[None]:
    """imapclient's NO/BAD (IMAP4.error) and BYE (IMAP4.abort) as wire's Refused and Bye, for a FETCH
    sent through imapclient; a socket error or EOF stays what it is."""
    try:
        yield
    except imaplib.IMAP4.abort as exc:
        bye = imap.untagged_responses.get("BYE")
        if not bye:  # EOF or a socket error: not the server's answer to this FETCH
            raise
        last = bye[-1]
        text = last.decode("utf-8", "replace") if isinstance(last, bytes) else _one_line(exc)
        raise wire.Bye(_one_line(exc), "BYE " + text) from exc
    except imaplib.IMAP4.error as exc:
        text = _one_line(exc)
        raise wire.Refused(text, text.split("=>", 1)[-1].strip()) from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(_server_text(str(exc)).split())[:300]


_BYTES_REPR = re.compile(r"""^b(['"]).*\1$""", re.DOTALL)


def _server_text(text: str) -> str:
    """A server reply as text: imaplib and imapclient put the reply's bytes in the exception, so its text
    reads ``b'[AUTHENTICATIONFAILED] Authentication failed.'``; this gives the words."""
    if not _BYTES_REPR.match(text):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else text


def tls_context(config: ImapMailbox) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if not config.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class _Fetched:
    messages: list[SourceMessage[int]]  # in UID order
    left: dict[int, int]  # UID -> size of the bodies dropped as they came (see ImapSession.fetch)


class _Budget:
    """Which bodies one FETCH keeps: each at most ``max_size``, together at most ``max_batch_bytes``
    (but always the first that is not over ``max_size``)."""

    def __init__(self, max_size: int, max_batch_bytes: int) -> None:
        self.max_size = max_size
        self.room = max_batch_bytes
        self.kept = 0

    def keep(self, size: int) -> bool:
        if size > self.max_size or (self.kept and size > self.room):
            return False
        self.kept += 1
        self.room -= size
        return True


class ImapSession:
    """A logged-in connection with one folder selected."""

    def __init__(
        self,
        config: ImapMailbox,
        client: IMAPClient,
        state: FolderState,
        capabilities: frozenset[bytes],
        keywords_allowed: bool = True,
    ) -> None:
        self.config = config
        self._client = client
        self._pipeline = wire.Pipeline(client._imap)  # this session's own commands (FETCH, STORE \\Seen)
        self.state = state
        self.capabilities = capabilities
        # False when the folder's PERMANENTFLAGS lack \\* (and our keyword): $MailroomParked cannot be kept.
        self.keywords_allowed = keywords_allowed
        self._idle: idling.Idle | None = None  # an IDLE a quiet renewal left running

    @classmethod
    def open(
        cls,
        config: ImapMailbox,
        password: Callable[[], str] | None = None,
        tokens: TokenSource | None = None,
    ) -> ImapSession:
        """Connect, secure, log in and select the folder (read-write).

        With ``auth: oauth2`` the login is XOAUTH2 or OAUTHBEARER with a token from ``tokens`` (pass the
        same source on every reconnect so its cache survives); a refused token is dropped and a fresh
        one tried once before ImapAuthError.
        """
        with _translated(f"connect to {config.host}:{config.effective_port}"):
            client = IMAPClient(
                config.host,
                port=config.effective_port,
                ssl=config.security is Security.TLS,
                ssl_context=tls_context(config) if config.security is Security.TLS else None,
                timeout=config.timeout,
            )
        # INTERNALDATE as the server sent it (with its zone), not converted to naive local time.
        client.normalise_times = False
        try:
            with _translated("socket options"):
                _tune_socket(client.socket())
            if config.security is Security.STARTTLS:
                with _translated("STARTTLS"):
                    client.starttls(tls_context(config))
            if config.auth is AuthMethod.OAUTH2:
                _oauth2_login(client, config, tokens)
            else:
                with _translated("login"):
                    client.login(config.username, (password or config.read_password)())
            with _translated(f"select {config.folder}"):
                selected = client.select_folder(config.folder)
                capabilities = frozenset(client.capabilities())
            _, target = config.after_delivery_action
            if target is not None:
                with _translated(f"LIST {target}"):
                    exists = client.folder_exists(target)
                if not exists:
                    raise ImapFolderError(
                        f"after_delivery folder {target!r} does not exist on {config.host}: create it "
                        "(mailroom does not, so a typo cannot send mail somewhere nobody looks)"
                    )
            state = FolderState(
                uidvalidity=int(selected[b"UIDVALIDITY"]),
                uidnext=int(selected[b"UIDNEXT"]) if b"UIDNEXT" in selected else None,
                exists=int(selected[b"EXISTS"]),
            )
            # RFC 3501 7.1: no PERMANENTFLAGS means every flag can be kept.
            permanent = {to_bytes(f).lower() for f in selected.get(b"PERMANENTFLAGS", (b"\\*",))}
            keywords = b"\\*" in permanent or PARKED.lower().encode() in permanent
            return cls(config, client, state, capabilities, keywords_allowed=keywords)
        except BaseException:
            _shutdown_quietly(client)
            raise

    @property
    def has_idle(self) -> bool:
        return b"IDLE" in self.capabilities

    # -- finding and fetching ------------------------------------------------------------------------

    def pending_uids(self) -> list[int]:
        """UIDs of the messages not yet done, by a server-side SEARCH.

        With after_delivery: seen, done means \\Seen; with delete or move, done messages leave the
        folder, so every message still in it (and not flagged \\Deleted) is pending. The mailbox's
        ``search`` keys are ANDed in: they narrow what is offered, never widen it.
        """
        action, _ = self.config.after_delivery_action
        criteria = ["UNSEEN", "UNDELETED"] if action is AfterDeliveryAction.SEEN else ["UNDELETED"]
        criteria += ["UNKEYWORD", PARKED, *self.config.search_criteria]  # the mailbox's search: narrows
        with _translated("UID SEARCH"):
            self._end_idle()
            self._pipeline.drain()  # first: what it announces is covered by this SEARCH
            self._forget_activity()
            return sorted(int(uid) for uid in self._client.search(criteria))

    def saw_activity(self) -> bool:
        """True if a command's response announced new mail (EXISTS/RECENT) since the last SEARCH.

        Closes the lost wake-up gap: a message that arrives while we SEARCH or STORE is announced in that
        command's untagged responses, not in the next IDLE.
        """
        untagged = self._client._imap.untagged_responses
        return any(name.encode() in _ACTIVITY for name in untagged)

    def _forget_activity(self) -> None:
        untagged = self._client._imap.untagged_responses
        for name in ("EXISTS", "RECENT"):
            untagged.pop(name, None)

    def fetch(
        self, uids: Sequence[int], batch_size: int, max_size: int, max_batch_bytes: int
    ) -> Iterator[list[SourceMessage[int]]]:
        """Yield the messages in chunks of at most ``batch_size`` messages and ``max_batch_bytes``
        (at least one message each), in UID order.

        The next chunk's FETCH is sent before the current chunk is yielded, so the server prepares it
        while the caller delivers (mailroom.imap.wire.Pipeline). As bodies stream in, one over
        ``max_size``, or one that would take the chunk past ``max_batch_bytes``, is read and dropped
        rather than kept. Sizes then known, the dropped ones that fit are fetched again in chunks that
        fit (so each is downloaded at most twice), and one over ``max_size`` only by its header: it is
        yielded with ``truncated=True``. Nearly always everything fits, in one FETCH per chunk.
        """
        chunks = [uids[i : i + batch_size] for i in range(0, len(uids), batch_size)]
        if not chunks:
            return
        left: dict[int, int] = {}
        with _translated("UID FETCH BODY.PEEK[]"):
            self._end_idle()
            ahead = self._pipeline.fetch(_uid_set(chunks[0]), _Budget(max_size, max_batch_bytes).keep)
        for i, chunk in enumerate(chunks):
            with _translated("UID FETCH BODY.PEEK[]", chunk):
                result = self._pipeline.wait(ahead)
            with _translated("UID FETCH BODY.PEEK[]"):
                if i + 1 < len(chunks):
                    ahead = self._pipeline.fetch(
                        _uid_set(chunks[i + 1]), _Budget(max_size, max_batch_bytes).keep
                    )
            fetched = self._fetched(chunk, result)
            left.update(fetched.left)
            if fetched.messages:
                yield fetched.messages
        chunk_uids: list[int] = []
        chunk_bytes = 0
        for uid, size in sorted(left.items()):
            if size > max_size:
                yield [self._fetch_header(uid, size, min(max_size, max_batch_bytes))]
                continue
            if chunk_uids and chunk_bytes + size > max_batch_bytes:
                yield self._fetch_now(chunk_uids)
                chunk_uids, chunk_bytes = [], 0
            chunk_uids.append(uid)
            chunk_bytes += size
        if chunk_uids:
            yield self._fetch_now(chunk_uids)

    def _fetch_now(self, uids: Sequence[int]) -> list[SourceMessage[int]]:
        with _translated("UID FETCH BODY.PEEK[]", uids):
            result = self._pipeline.wait(self._pipeline.fetch(_uid_set(uids)))
        return self._fetched(uids, result).messages

    def _fetched(self, uids: Sequence[int], result: wire.FetchResult) -> _Fetched:
        """What a FETCH of ``uids`` brought, in UID order (a server may add a message we did not ask for)."""
        wanted = set(uids)
        messages = sorted(
            (
                self._message(m.uid, m.body, len(m.body), m.internaldate)
                for m in result.messages
                if m.uid in wanted
            ),
            key=lambda m: m.ref,
        )
        return _Fetched(messages, {uid: size for uid, size in result.left.items() if uid in wanted})

    def _fetch_header(self, uid: int, size: int, limit: int) -> SourceMessage[int]:
        """The header of a message too large to queue, at most ``limit`` bytes of it: a message without
        the blank line that ends a header is all header to the server (RFC 3501 6.4.5)."""
        with _translated("UID FETCH BODY.PEEK[HEADER]"):
            self._end_idle()
            self._pipeline.drain()
        with _translated("UID FETCH BODY.PEEK[HEADER]", [uid]), _imapclient_refusals(self._client._imap):
            data = self._client.fetch([uid], [f"BODY.PEEK[HEADER]<0.{limit}>", "INTERNALDATE"])
        items = data.get(uid, {})
        header = next((v for k, v in items.items() if k.startswith(b"BODY[HEADER]")), None) or b""
        internaldate = items.get(b"INTERNALDATE")
        return self._message(uid, header, size, internaldate, truncated=True)

    def _message(
        self, uid: int, raw: bytes, size: int, internaldate: datetime | None, truncated: bool = False
    ) -> SourceMessage[int]:
        return SourceMessage(
            MailboxKind.IMAP, uid, raw, size, internaldate, truncated, epoch=self.state.uidvalidity
        )

    def describe(self, uid: int, header_limit: int) -> tuple[SourceMessage[int], str | None]:
        """What can be read of a message the server will not hand over: its size and INTERNALDATE (from
        the server's index, which Dovecot answers even when it cannot read the file) and up to
        ``header_limit`` bytes of its header (``truncated``: never the whole message). Returns it with
        None, or with the server's words for what it refused (then size or header may be missing);
        words starting with ``BYE`` mean the server has closed the session. Never raises FetchFailed."""
        size, internaldate, header = 0, None, b""
        with _translated("UID FETCH RFC822.SIZE"):
            self._end_idle()
            self._pipeline.drain()
        try:
            with _translated("UID FETCH RFC822.SIZE", [uid]), _imapclient_refusals(self._client._imap):
                items = self._client.fetch([uid], ["RFC822.SIZE", "INTERNALDATE"]).get(uid, {})
            size, internaldate = int(items.get(b"RFC822.SIZE", 0)), items.get(b"INTERNALDATE")
            header = self._fetch_header(uid, size, header_limit).raw
            refused = None
        except FetchFailed as exc:
            refused = exc.words  # a BYE's words start with BYE
        return self._message(uid, header, size, internaldate, truncated=True), refused

    # -- marking -------------------------------------------------------------------------------------

    def park(self, uids: Sequence[int]) -> None:
        """Done, but left on the server whatever after_delivery says: its job holds only the header.

        Flagged \\Seen and $MailroomParked, so no SEARCH offers it again; on a server that cannot keep
        keywords only \\Seen (the watcher then remembers the UIDs itself, see imap.watcher.ImapSource).
        """
        if not uids:
            return
        flags = [SEEN, PARKED.encode()] if self.keywords_allowed else [SEEN]
        with _translated("mark parked"):
            self._end_idle()
            self._pipeline.drain()
            self._client.add_flags(list(uids), flags, silent=True)

    def mark_done(self, uids: Sequence[int]) -> None:
        """Apply after_delivery to the whole set in one command (two or three for delete and move).

        \\Seen is sent and not waited for: its answer is read with the next command's (a FETCH already
        sent is answered first), and a refusal fails that command, so the session is dropped and the
        messages, still unmarked, are offered again (their guard keeps them from a second job).
        """
        if not uids:
            return
        action, folder = self.config.after_delivery_action
        uid_list = list(uids)
        with _translated(f"mark {action.value}"):
            self._end_idle()
            if action is AfterDeliveryAction.SEEN:
                self._pipeline.add_flags(_uid_set(uid_list), SEEN)
                return
            self._pipeline.drain()
            if action is AfterDeliveryAction.MOVE and b"MOVE" in self.capabilities:
                self._client.move(uid_list, folder)
            else:
                if action is AfterDeliveryAction.MOVE:
                    self._client.copy(uid_list, folder)
                self._client.add_flags(uid_list, [SEEN, DELETED], silent=True)
                # UID EXPUNGE removes exactly these. A plain EXPUNGE would also remove every message another
                # client flagged \\Deleted (its own undo window), so without UIDPLUS ours stay flagged
                # \\Deleted (no SEARCH offers them again) until the server or its owner expunges.
                if self.config.expunge_deleted and b"UIDPLUS" in self.capabilities:
                    self._client.uid_expunge(uid_list)

    # -- waiting -------------------------------------------------------------------------------------

    def idle(
        self,
        seconds: float,
        should_stop: Callable[[], bool],
        done_timeout: float,
        wakeup: int | None = None,
    ) -> bool:
        """IDLE for up to ``seconds``; True as soon as the server announces new mail.

        ``wakeup`` is a descriptor that becomes readable when ``should_stop`` turns true (a
        mailroom.stopping.StopEvent's): the wait is then one poll() on the socket and it together, and
        a quiet mailbox costs nothing until the server speaks or the IDLE is due for renewal. Without
        it, the wait is cut into one-second slices to look at ``should_stop``. Ending the IDLE (DONE)
        must be answered within ``done_timeout``: that round trip is what proves a quiet connection alive.
        """
        try:  # as _translated("IDLE") does, without a generator's cost on a path taken 2,000 times a minute
            return self._idle_until(time.monotonic() + seconds, should_stop, done_timeout, wakeup)
        except (wire.Refused, wire.Bye) as exc:  # a STORE sent ahead, answered NO or BYE
            raise ImapError(f"IDLE failed: {_one_line(exc)}") from exc
        except (imaplib.IMAP4.error, OSError, ValueError) as exc:
            raise ImapError(f"IDLE failed: {type(exc).__name__}: {_one_line(exc)}") from exc

    def _idle_until(
        self, deadline: float, should_stop: Callable[[], bool], done_timeout: float, wakeup: int | None
    ) -> bool:
        woke = False
        running, self._idle = self._idle, None  # until a renewal leaves the next one running
        if running is None:
            self._pipeline.drain()
            running = idling.Idle(self._client._imap, self._client.socket())
            woke = running.begin(self.config.timeout)
        due = False
        try:
            while not woke and not should_stop():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    due = True
                    break
                line = running.next_line(remaining if wakeup is not None else min(1.0, remaining), wakeup)
                if line is None:
                    continue
                if line.startswith(b"* BYE"):
                    raise ImapError(f"server ended the session during IDLE: {line[:200]!r}")
                if line.startswith((b"* NO", b"* BAD")):
                    # e.g. Dovecot when the selected folder was deleted and created again: the
                    # session stays open but sees nothing new; a fresh SELECT does.
                    raise ImapError(f"server reported a problem during IDLE: {line[:200]!r}")
                woke = idling.announces_mail(line)
        finally:
            stopping = should_stop()
            if due and not stopping:
                # Quiet until the renewal: DONE and the next IDLE in one write; the new IDLE stays
                # running for the next call (any other command ends it first, _end_idle).
                announced = running.renew(done_timeout)
                self._idle = running
            else:
                # Shutting down needs no proof of life, only a prompt exit (SIGTERM's grace is 8 s).
                timeout = min(done_timeout, _STOPPING_DONE_TIMEOUT) if stopping else done_timeout
                announced = running.end(timeout, self.config.timeout)
        return woke or announced

    def _end_idle(self, timeout: float | None = None) -> None:
        """End the IDLE a quiet renewal left running, before any other command; new mail announced in
        DONE's answer is filed where imaplib files it, for saw_activity (and the SEARCH after it)."""
        running, self._idle = self._idle, None
        if running is None:
            return
        timeout = timeout or self.config.timeout
        if running.end(timeout, timeout):
            self._client._imap.untagged_responses.setdefault("EXISTS", []).append(b"0")

    def noop(self) -> bool:
        """NOOP; True if its responses announce new mail."""
        with _translated("NOOP"):
            self._end_idle()
            self._pipeline.drain()
            _, responses = self._client.noop()
        return any(_is_activity(r) for r in responses)

    def close(self) -> None:
        """Log out if the server still answers; never raises."""
        try:
            self._end_idle(2.0)
            self._client.socket().settimeout(2.0)
            self._pipeline.drain()
            self._client.logout()
        except (imaplib.IMAP4.error, OSError, ValueError):
            _shutdown_quietly(self._client)


def _oauth2_login(client: IMAPClient, config: ImapMailbox, tokens: TokenSource | None) -> None:
    """SASL XOAUTH2 or OAUTHBEARER; on a refusal, invalidate the token and try one fresh token."""
    assert config.oauth2 is not None and config.username is not None  # by the config validator
    if tokens is None:
        tokens = token_source_for(config.name, config.oauth2, timeout=config.timeout)
    with _translated("CAPABILITY"):
        capabilities = frozenset(client.capabilities())
    mechanism = choose_mechanism(capabilities, config.oauth2.mechanism)
    for attempt in range(2):
        try:
            token = tokens.token()
        except TokenError as exc:
            raise ImapAuthError(f"no OAuth2 token: {exc}") from exc
        try:
            with _translated(f"login ({mechanism})"):
                if mechanism == OAUTHBEARER:
                    client.oauthbearer_login(config.username, token)
                else:
                    client.oauth2_login(config.username, token, mech=mechanism)
            return
        except ImapAuthError as exc:
            tokens.invalidate()
            if attempt == 1:
                raise ImapAuthError(f"{mechanism} login refused a freshly fetched token: {exc}") from exc


def _uid_set(uids: Sequence[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1:3,7,9:10"`` (sorted, runs collapsed)."""
    ranges: list[str] = []
    ordered = sorted(uids)
    start = previous = ordered[0]
    for uid in [*ordered[1:], 0]:  # 0 ends the last run
        if uid == previous + 1:
            previous = uid
            continue
        ranges.append(str(start) if start == previous else f"{start}:{previous}")
        start = previous = uid
    return ",".join(ranges)


def _is_activity(response: Any) -> bool:
    return isinstance(response, tuple) and len(response) >= 2 and to_bytes(response[1]) in _ACTIVITY


def _shutdown_quietly(client: IMAPClient) -> None:
    try:
        client.shutdown()
    except (imaplib.IMAP4.error, OSError):
        pass


def _tune_socket(sock: socket.socket) -> None:
    """TCP_NODELAY: imapclient writes a command and its CRLF in two writes, and some servers (Cyrus,
    Courier) send an answer in two pieces; with Nagle each second piece waits for the delayed ACK (~40 ms
    on Linux). Keepalive lets the kernel notice a peer that vanished; the IDLE renewal covers a path that
    silently drops."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
