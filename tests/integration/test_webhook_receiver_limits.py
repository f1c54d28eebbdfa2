"""`mailroom webhooks` as a process against slow and hostile clients: a client that has not sent its
headers within 10 s is cut, 1,000 of them do not keep a valid signed call from its 200, and JSON nested
100,000 deep is a 404 like any other invalid call (not a 500 with a traceback)."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.ports import free_port, port_is_open
from mailroom.provider.server import HEADER_TIMEOUT
from tests.integration.test_provider_webhooks_live import KEY, failed, post, signed
from tests.support import wait_for

pytestmark = pytest.mark.integration

SLOW_CLIENTS = 1000


@pytest.fixture
def receiver(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    key_file = tmp_path / "signing-key"
    key_file.write_text(KEY + "\n")
    port = free_port()
    config = tmp_path / "mailroom.yml"
    config.write_text(
        f"redis_url: {redis_url}\nprovider:\n  signing_key_file: {key_file}\n  webhook_port: {port}\n"
        "  webhook_path: /hooks/mg\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailroom", "webhooks"],
        env={**os.environ, "MAILROOM_CONFIG": str(config)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: port_is_open(port) or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        yield f"http://127.0.0.1:{port}/hooks/mg", proc
    finally:
        proc.terminate()
        proc.wait(10)


def _slow_clients(url: str, n: int) -> list[socket.socket]:
    """Connections that send half a request header and then nothing."""
    port = int(url.split(":")[2].split("/")[0])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    clients = []
    for _ in range(n):
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.sendall(b"POST /hooks/mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        clients.append(client)
    return clients


def _closed_by_server(client: socket.socket) -> bool:
    client.settimeout(0.01)
    try:
        return client.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.mark.timeout(120)
def test_slow_clients_are_cut_and_never_turn_a_valid_call_away(receiver):
    url, _ = receiver
    clients = _slow_clients(url, SLOW_CLIENTS)
    opened = time.monotonic()
    try:
        status, body = post(url, signed(failed("valid@example.org")))
        assert (status, body) == (200, b"")  # was 503 with 210 slow clients (limit_concurrency=200)
        assert not any(_closed_by_server(c) for c in clients[:20])  # still within their 10 s
        wait_for(
            lambda: all(_closed_by_server(c) for c in clients), timeout=HEADER_TIMEOUT + 20, interval=0.5
        )
        took = time.monotonic() - opened
        print(f"{SLOW_CLIENTS} slow clients cut {took:.1f} s after they connected")
        assert took >= HEADER_TIMEOUT - 1
        assert post(url, signed(failed("after@example.org")))[0] == 200
    finally:
        for client in clients:
            client.close()


def test_deeply_nested_json_is_a_404(receiver):
    url, proc = receiver
    assert post(url, b"[" * 100_000 + b"]" * 100_000) == (404, b"")
    assert post(url, b'{"a":' * 50_000 + b"1" + b"}" * 50_000) == (404, b"")
    assert post(url, signed(failed("still@example.org")))[0] == 200
    proc.terminate()
    output = proc.communicate(timeout=10)[0].decode()
    assert "Traceback" not in output and "RecursionError" not in output
