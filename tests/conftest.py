"""Shared fixtures: real redis-server and Dovecot processes on free loopback ports (see devstack/).

Session-scoped servers are cheap to share; each test still gets a clean slate (FLUSHALL, a fresh IMAP
user). Tests that stop, kill or restart a server use the ``make_*`` factories so the shared ones stay up.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme

from devstack import Dovecot, ImapAccount, RedisServer, TLSFiles


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the shared Redis, emptied before the test (restarted first if a test left it down)."""
    if not redis_server.running:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture(scope="session")
def dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
    server = Dovecot(tmp_path_factory.mktemp("dovecot"), users={"incoming": "secret"})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def imap_account(dovecot: Dovecot) -> ImapAccount:
    """A brand-new user on the shared Dovecot, so its INBOX is empty and its UIDs start at 1."""
    if not dovecot.running:
        dovecot.start()
    return dovecot.add_user(f"t{uuid.uuid4().hex[:12]}", "secret")


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Factory for private, started RedisServers; all are stopped at teardown."""
    servers: list[RedisServer] = []

    def factory(port: int | None = None, **options: Any) -> RedisServer:
        """``options``: RedisServer's (persistent, replica_of, args)."""
        server = RedisServer(tmp_path / f"redis{len(servers)}", port=port, **options)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.kill()


@pytest.fixture
def make_dovecot(tmp_path: Path) -> Iterator[Callable[..., Dovecot]]:
    """Factory for private, started Dovecots; all are stopped at teardown."""
    servers: list[Dovecot] = []

    def factory(
        users: Mapping[str, str] | None = None, port: int | None = None, tls: TLSFiles | None = None
    ) -> Dovecot:
        server = Dovecot(tmp_path / f"dovecot{len(servers)}", users=users, port=port, tls=tls)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.kill()


@pytest.fixture
def tls_dovecot(make_dovecot: Callable[..., Dovecot], tmp_path: Path) -> tuple[Dovecot, Path]:
    """A Dovecot serving IMAPS with a certificate for 127.0.0.1 from a throw-away CA."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    dovecot = make_dovecot(tls=TLSFiles(cert_path, key_path))
    return dovecot, ca_path
