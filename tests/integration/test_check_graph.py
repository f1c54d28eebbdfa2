"""`mailroom check` on a Microsoft Graph mailbox: the local token endpoint (tests/oauthserver.py) and Graph
stand-in (tests/graphserver.py) over real HTTP, real Redis. Token, folder and waiting each get a line; a
refused client or a missing folder is a ✗ naming the mailbox, and no secret or token is ever printed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from devstack import make_message
from mailroom.cli import cli
from mailroom.config import load_settings
from mailroom.graph.state import delta_key
from tests.graphserver import GraphServer, _error
from tests.oauthserver import OAuthServer
from tests.support import write_config

pytestmark = pytest.mark.integration
USER = "support@contoso.example"
SECRET = "s3cret"
WRONG_SECRET = "Qx7-not-the-secret"


@dataclass
class FoldersGraphServer(GraphServer):
    """The stand-in, with the folders a real mailbox has: a delta of any other folder answers 404
    ErrorItemNotFound, as Graph does for a folder that does not exist (graph/errors). The shared stand-in
    serves every folder name, which the watcher tests rely on."""

    folders: frozenset[str] = field(default_factory=lambda: frozenset({"inbox", "archive"}))

    def delta_page(self, folder: str, query: dict[str, str], page_size: int) -> tuple[int, dict[str, Any]]:
        if folder not in self.folders:
            return 404, _error("ErrorItemNotFound", "The specified object was not found in the store.")
        return super().delta_page(folder, query, page_size)


@pytest.fixture
def oauth() -> Iterator[OAuthServer]:
    with OAuthServer(username=USER, clients={"mailroom": SECRET}) as server:
        yield server


@pytest.fixture
def graph(oauth: OAuthServer) -> Iterator[FoldersGraphServer]:
    with FoldersGraphServer(user=USER, token_ok=oauth.active) as server:
        yield server


def write_graph_config(
    tmp_path: Path,
    redis_url: str,
    oauth: OAuthServer,
    graph: GraphServer,
    secret: str = SECRET,
    **overrides: Any,
) -> Path:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(secret + "\n")
    mailbox: dict[str, Any] = {
        "name": "cloud",
        "kind": "graph",
        "folder": "inbox",
        "graph": {
            "tenant": "contoso",
            "client_id": "mailroom",
            "client_secret_file": str(secret_file),
            "user": USER,
            "token_url": oauth.token_url,
            "base_url": graph.base_url,
            "page_size": 2,  # the waiting figure must add up across delta pages
        },
        "retries": [],
        **overrides,
    }
    return write_config(tmp_path / "c.yml", redis_url, mailbox)


def a_worker_listens(redis_url: str) -> None:
    """Register a worker on the queue (not run it): the check's workers line is then ✓, so the exit code
    depends on the Graph lines alone."""
    connection = redis.Redis.from_url(redis_url)
    queue = Queue("incoming_email", connection=connection, serializer=JSONSerializer)
    Worker([queue], connection=connection, serializer=JSONSerializer).register_birth()


def run_check(config: Path, *args: str) -> tuple[str, int]:
    result = CliRunner().invoke(cli, ["--config", str(config), "check", *args])
    print(result.output)
    return result.output, result.exit_code


def assert_no_secret_or_token(output: str, oauth: OAuthServer) -> None:
    for secret in (SECRET, WRONG_SECRET, *oauth.tokens):
        assert secret not in output, f"{secret!r} printed"


def test_check_probes_token_folder_and_waiting(tmp_path, redis_url, oauth, graph):
    ids = [graph.deliver(make_message(i)) for i in range(5)]
    graph.messages[ids[0]].is_read = True  # done already: not waiting
    graph.deliver(make_message(9), folder="archive")  # another folder: not counted
    a_worker_listens(redis_url)
    config = write_graph_config(tmp_path, redis_url, oauth, graph)
    output, exit_code = run_check(config)
    lines = output.splitlines()
    assert f"✓ cloud: token: client mailroom: granted by {oauth.token_url}" in lines
    assert f"✓ cloud: folder: inbox of {USER} reachable (5 messages)" in lines
    assert "✓ cloud: waiting: 4 message(s) not yet done" in lines
    # (the test Redis runs without persistence: that warning is expected)
    assert not any(line.startswith(("✗", "!")) and "redis:persistence" not in line for line in lines), lines
    assert exit_code == 0
    assert_no_secret_or_token(output, oauth)
    assert len(oauth.tokens) == 1  # one token, reused for every delta page
    # the check changed nothing: no message marked, no delta link saved
    assert len(graph.unread()) == 4
    mailbox = load_settings(config).mailboxes[0]
    assert redis.Redis.from_url(redis_url).get(delta_key(mailbox)) is None


def test_check_names_a_refused_client_secret(tmp_path, redis_url, oauth, graph):
    graph.deliver(make_message(1))
    a_worker_listens(redis_url)
    config = write_graph_config(tmp_path, redis_url, oauth, graph, secret=WRONG_SECRET)
    output, exit_code = run_check(config)
    lines = output.splitlines()
    token_lines = [line for line in lines if line.startswith("✗ cloud: token:")]
    assert len(token_lines) == 1, lines
    assert "invalid_client" in token_lines[0] and oauth.token_url in token_lines[0]
    assert not any(line.startswith(("✓ cloud: folder", "✓ cloud: waiting")) for line in lines)
    assert "✓ redis: PING answered" in lines  # the other checks still run
    assert exit_code == 1
    assert_no_secret_or_token(output, oauth)
    assert graph.requests == []  # without a token, Graph is not asked


def test_check_names_a_missing_folder_in_json(tmp_path, redis_url, oauth, graph):
    a_worker_listens(redis_url)
    config = write_graph_config(tmp_path, redis_url, oauth, graph, folder="no-such-folder")
    output, exit_code = run_check(config, "--json")
    facts = {fact["name"]: fact for fact in json.loads(output)}
    assert facts["cloud: token"]["outcome"] == "ok"
    folder = facts["cloud: folder"]
    assert folder["outcome"] == "fail"
    assert folder["detail"].startswith(f"no-such-folder of {USER} not reachable: ")
    assert "404 ErrorItemNotFound" in folder["detail"]
    assert "cloud: waiting" not in facts
    assert facts["workers:incoming_email"]["outcome"] == "ok"
    assert exit_code == 1
    assert_no_secret_or_token(output, oauth)


def test_check_json_is_one_document_from_a_real_process(tmp_path, redis_url, oauth, graph):
    config = write_graph_config(tmp_path, redis_url, oauth, graph)
    command = [sys.executable, "-m", "mailroom", "--config", str(config), "check", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    print(result.stdout)
    facts = {fact["name"]: fact for fact in json.loads(result.stdout)}
    assert facts["cloud: waiting"]["outcome"] == "ok"
    assert "oauth2_token_fetched" in result.stderr  # the logs are still written, on stderr
