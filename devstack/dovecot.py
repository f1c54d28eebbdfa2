"""A private Dovecot (IMAP only) on loopback ports, with its config, state, log and mail in one workdir.

Dovecot refuses to access mail as uid 0, so when we run as root mail belongs to an unprivileged system
user (``mailroom-test``, created on demand) and Dovecot's own processes run as the Debian package's
``dovecot``/``dovenull`` users. As a normal user everything runs as that user and chroots are disabled.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from devstack.ports import DevstackError, free_port, log_tail, wait_port_closed

START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
MAIL_USER = "mailroom-test"
# Unix sockets live in base_dir; sun_path is 108 bytes, so long pytest paths need a shorter home.
MAX_BASE_DIR_LEN = 60
# Connections one server accepts at once (imap processes; the master and anvil count each one).
PROCESS_LIMIT = 1200
CLIENT_LIMIT = 4 * PROCESS_LIMIT


@dataclass(frozen=True)
class TLSFiles:
    """PEM certificate chain and private key for the optional IMAPS listener."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ImapAccount:
    """Where a test logs in: plain IMAP on loopback."""

    host: str
    port: int
    username: str
    password: str
    folder: str = "INBOX"


def _binary(name: str, fallback: str) -> str:
    return shutil.which(name) or fallback


def _ensure_mail_user() -> tuple[int, int]:
    """Create the unprivileged system user that owns test mail (idempotent); return (uid, gid)."""
    try:
        entry = pwd.getpwnam(MAIL_USER)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
             MAIL_USER],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        # exit 9: created concurrently by another test process
        if result.returncode not in (0, 9):
            raise DevstackError(f"useradd {MAIL_USER} failed: {result.stderr.strip()}") from None
        entry = pwd.getpwnam(MAIL_USER)
    return entry.pw_uid, entry.pw_gid


def _ensure_traversable(path: Path) -> None:
    """Let unprivileged Dovecot processes reach ``path``: add search (o+x, never read) to ancestors.

    Needed when root's tmp dirs are 0700 (pytest's /tmp/pytest-of-root is).
    """
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


class Dovecot:
    """``dovecot -F`` as a child process in its own session, configured only by ``workdir/dovecot.conf``."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        users: Mapping[str, str] | None = None,
        port: int | None = None,
        tls: TLSFiles | None = None,
        oauth2_introspection_url: str | None = None,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        # With a URL, XOAUTH2 and OAUTHBEARER logins are checked by POSTing the token there (RFC 7662
        # style); password logins keep working through the passwd-file passdb.
        self.oauth2_introspection_url = oauth2_introspection_url
        self.users: dict[str, str] = dict(users if users is not None else {"incoming": "secret"})
        self._port_given = port is not None
        self.port = port if port is not None else free_port()
        self.tls = tls
        self.imaps_port: int | None = free_port() if tls is not None else None
        self.conf_path = self.workdir / "dovecot.conf"
        self.log_path = self.workdir / "dovecot.log"
        self.passwd_dir = self.workdir / "passwd.d"
        self.mail_root = self.workdir / "mail"
        self.state_dir = self.workdir / "state"
        run_dir = self.workdir / "run"
        if len(str(run_dir)) > MAX_BASE_DIR_LEN:
            run_dir = Path(tempfile.mkdtemp(prefix="dovecot-"))
        self.base_dir = run_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._is_root = os.geteuid() == 0
        self._prepared = False
        if self._is_root:
            self.mail_uid, self.mail_gid = _ensure_mail_user()
            self.internal_user, self.internal_group, self.login_user = "dovecot", "dovecot", "dovenull"
        else:
            self.mail_uid, self.mail_gid = os.getuid(), os.getgid()
            self.internal_user = self.login_user = pwd.getpwuid(os.getuid()).pw_name
            self.internal_group = grp.getgrgid(os.getgid()).gr_name

    # ---- files -------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        for directory in (self.workdir, self.mail_root, self.state_dir, self.base_dir):
            directory.mkdir(parents=True, exist_ok=True)
        if self._is_root:
            _ensure_traversable(self.workdir)
            os.chown(self.mail_root, self.mail_uid, self.mail_gid)
            self.base_dir.chmod(0o755)
        self._write_passwd()
        if self.oauth2_introspection_url is not None:
            oauth2_conf = self.workdir / "dovecot-oauth2.conf.ext"
            # Dovecot 2.3 compares active_value as a string: the introspection answer must say "true".
            oauth2_conf.write_text(
                "introspection_mode = post\n"
                f"introspection_url = {self.oauth2_introspection_url}\n"
                "force_introspection = yes\n"
                "username_attribute = username\n"
                "active_attribute = active\n"
                "active_value = true\n"
            )
            oauth2_conf.chmod(0o644)
        self.conf_path.write_text(self._config())
        self._prepared = True

    def _write_passwd(self, only: str | None = None) -> None:
        # One passwd-file per user (passdb path has %u): a user added while running is a file Dovecot
        # has never opened, so there is no reload delay (a changed file is re-read only once a second).
        self.passwd_dir.mkdir(exist_ok=True)
        if self._is_root:
            # read by the auth process, which runs as default_internal_user
            os.chown(self.passwd_dir, 0, grp.getgrnam(self.internal_group).gr_gid)
        self.passwd_dir.chmod(0o750)
        for name, password in self.users.items():
            if only is not None and name != only:
                continue
            if "/" in name or name.startswith("."):
                raise ValueError(f"unsupported test username {name!r}")
            tmp = self.passwd_dir / f".{name}.{uuid.uuid4().hex}.tmp"
            tmp.write_text(f"{name}:{{PLAIN}}{password}::::::\n")
            if self._is_root:
                os.chown(tmp, 0, grp.getgrnam(self.internal_group).gr_gid)
            tmp.chmod(0o640)
            tmp.replace(self.passwd_dir / name)

    def _config(self) -> str:
        chroot = "login" if self._is_root else ""
        if self.tls is not None:
            ssl = f"ssl = yes\nssl_cert = <{self.tls.cert}\nssl_key = <{self.tls.key}\n"
        else:
            ssl = "ssl = no\n"
        mechanisms = "plain login"
        oauth2_passdb = ""
        if self.oauth2_introspection_url is not None:
            mechanisms += " xoauth2 oauthbearer"
            # no 2 s penalty per refused token: tests refuse tokens on purpose
            oauth2_passdb = (
                "auth_failure_delay = 0\n"
                "passdb {\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
                f"  args = {self.workdir / 'dovecot-oauth2.conf.ext'}\n}}\n"
            )
        return f"""\
# Generated by devstack.dovecot for a throw-away test server; edits are overwritten on start().
base_dir = {self.base_dir}
state_dir = {self.state_dir}
instance_name = dovecot-devstack-{self.port}
log_path = {self.log_path}
protocols = imap
listen = 127.0.0.1
shutdown_clients = yes
{ssl}
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
login_trusted_networks =
{oauth2_passdb}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_dir}/%u
}}
userdb {{
  driver = static
  args = uid={self.mail_uid} gid={self.mail_gid} home={self.mail_root}/%u
}}
mail_location = maildir:~/Maildir
mail_uid = {self.mail_uid}
mail_gid = {self.mail_gid}
first_valid_uid = {self.mail_uid}
first_valid_gid = {self.mail_gid}
default_internal_user = {self.internal_user}
default_internal_group = {self.internal_group}
default_login_user = {self.login_user}
mail_fsync = never
# Room for one watcher holding hundreds of mailboxes (bench/many.py): Dovecot runs one imap process per
# connection, and its default of 100 processes per service would refuse the 101st login.
default_process_limit = {PROCESS_LIMIT}
default_client_limit = {CLIENT_LIMIT}
# Each imap process in IDLE watches its mailbox with inotify; past fs.inotify.max_user_instances (128 by
# default, all our imap processes run as one user) it falls back to looking every this often (30 s).
mailbox_idle_check_interval = 1 secs

service imap-login {{
  chroot = {chroot}
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.imaps_port or 0}
  }}
}}
service anvil {{
  chroot =
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0
  }}
}}
"""

    # ---- users and mail ----------------------------------------------------------------------------

    def add_user(self, username: str, password: str = "secret") -> ImapAccount:
        """Add (or re-password) a user; a new user can log in at once, even while running."""
        self.users[username] = password
        if self._prepared:
            # Again: another pytest session on this machine starting resets /tmp/pytest-of-<user> to 0700,
            # and Dovecot's auth and mail processes could no longer reach this user's files.
            _ensure_traversable(self.workdir)
            self._write_passwd(only=username)
        return self.account(username)

    def account(self, username: str, folder: str = "INBOX") -> ImapAccount:
        return ImapAccount(self.host, self.port, username, self.users[username], folder)

    def maildir(self, user: str) -> Path:
        return self.mail_root / user / "Maildir"

    def deliver_files(self, user: str, messages: Iterable[bytes]) -> int:
        """Fast path for benchmarks: write messages straight into the user's INBOX ``new/``.

        Each file is written in ``tmp/`` and renamed, as Maildir delivery requires; Dovecot assigns
        UIDs when a client next opens the mailbox. Returns the number delivered.
        """
        maildir = self.maildir(user)
        for directory in (self.mail_root / user, maildir, maildir / "tmp", maildir / "new", maildir / "cur"):
            if not directory.exists():
                directory.mkdir(mode=0o700)
                if self._is_root:
                    os.chown(directory, self.mail_uid, self.mail_gid)
        tmp_dir, new_dir = maildir / "tmp", maildir / "new"
        stamp, pid, host = int(time.time()), os.getpid(), socket.gethostname().replace("/", "_")
        batch = uuid.uuid4().hex[:12]
        chown = self._is_root
        count = 0
        for count, raw in enumerate(messages, start=1):
            name = f"{stamp}.M{count}P{pid}Q{batch}.{host},S={len(raw)}"
            tmp = tmp_dir / name
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, raw)
                if chown:
                    os.fchown(fd, self.mail_uid, self.mail_gid)
            finally:
                os.close(fd)
            os.rename(tmp, new_dir / name)
        return count

    def doveadm(self, *args: str, check: bool = True) -> str:
        """Run ``doveadm -c CONF ARGS`` and return stdout, e.g. ``doveadm("search", "-u", u, ...)``."""
        result = subprocess.run(
            [_binary("doveadm", "/usr/bin/doveadm"), "-c", str(self.conf_path), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise DevstackError(
                f"doveadm {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}"
            )
        return result.stdout

    def message_count(self, user: str, *query: str, folder: str = "INBOX") -> int:
        """Count messages via doveadm search (no IMAP session); ``query`` e.g. ``("unseen",)``."""
        return len(self.doveadm("search", "-u", user, "mailbox", folder, *(query or ("all",))).splitlines())

    def set_uidvalidity(self, user: str, value: int, folder: str = "INBOX") -> None:
        """Change UIDVALIDITY in place (works for INBOX, which IMAP cannot delete)."""
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(value), folder)

    # ---- process lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        if self.running:
            return self
        attempts = 1 if self._port_given else 3
        for attempt in range(attempts):
            try:
                self._start_once()
                return self
            except DevstackError as exc:
                if attempt + 1 == attempts or "Address already in use" not in str(exc):
                    raise
                self.port = free_port()
                if self.tls is not None:
                    self.imaps_port = free_port()
        return self

    def _start_once(self) -> None:
        self._prepare()
        dovecot = _binary("dovecot", "/usr/sbin/dovecot")
        check = subprocess.run(
            [dovecot, "-c", str(self.conf_path), "-n"], capture_output=True, text=True, check=False
        )
        if check.returncode != 0 or "Error" in check.stderr:
            raise DevstackError(f"dovecot rejected {self.conf_path}:\n{check.stderr.strip()}")
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        stderr_path = self.workdir / "dovecot.stderr"
        # a file, not a pipe: nobody drains a pipe while the server runs
        with stderr_path.open("wb") as stderr_file:
            self._proc = subprocess.Popen(
                [dovecot, "-F", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr_file,
                stderr=stderr_file,
                start_new_session=True,  # one process group: kill() reaches every child
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self._proc.poll() is None:
            if self._greets():
                return
            time.sleep(0.05)
        proc = self._proc
        exited = proc.poll() is not None
        self._signal_group(signal.SIGKILL)
        stderr = stderr_path.read_text(errors="replace").strip()
        log = self.log_path.read_text(errors="replace")[log_start:] if self.log_path.exists() else ""
        tail = "\n".join(log.splitlines()[-30:])
        why = f"exited with code {proc.returncode}" if exited else f"did not greet within {START_TIMEOUT}s"
        raise DevstackError(
            f"dovecot on 127.0.0.1:{self.port} {why}.\nstderr: {stderr}\nlog tail ({self.log_path}):\n{tail}"
        )

    def _greets(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.settimeout(2)
                return sock.recv(256).startswith(b"* OK")
        except OSError:
            return False

    def _signal_group(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)  # the master shuts its children down itself
            proc.wait(timeout=STOP_TIMEOUT)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:  # stragglers (e.g. an imap process mid-IDLE) must not outlive the test
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not wait_port_closed(self.port, timeout=STOP_TIMEOUT):
            raise DevstackError(f"port {self.port} still open after stopping dovecot")

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM to the master); a no-op when not running."""
        self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the master and every child at once, for chaos tests."""
        self._signal_group(signal.SIGKILL)

    def restart(self) -> Self:
        """Stop (if running) and start on the same port(s); mail and UIDs survive."""
        self.stop()
        self._start_once()
        return self

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Dovecot(port={self.port}, imaps_port={self.imaps_port}, running={self.running})"
