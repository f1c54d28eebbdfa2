"""Chaos scenarios start real subprocesses: none may outlive its test, even a failed one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.harness import MailroomProcess


@pytest.fixture(autouse=True)
def _reap_processes() -> Iterator[None]:
    yield
    MailroomProcess.reap()
