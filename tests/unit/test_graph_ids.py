"""Graph immutable ids in RQ job ids: valid for RQ, deterministic, and distinct where sanitising alone
would merge them."""

from __future__ import annotations

import re

from mailroom.queue import guard_key, job_id_for
from mailroom.schema import JobPayload


def _payload(uid: str) -> JobPayload:
    return JobPayload(
        mailbox="cloud", source="graph", uidvalidity=None, uid=uid, received_at="2026-01-01T00:00:00+00:00",
        size=1, truncated=False, message_id=None, key=None, key_header=None, from_address=None, subject=None,
        auto_reply=False, bounce=False, parse_error=None, raw=b"x",
    )  # fmt: skip


def test_graph_job_ids_are_valid_deterministic_and_distinct() -> None:
    a = "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0AxH1f_8Vt2kO4oDAAA="
    b = a.replace("=", "_")
    ids = [job_id_for(_payload(a)), job_id_for(_payload(b))]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)
    assert ids[0] != ids[1]
    assert job_id_for(_payload(a)) == ids[0]
    assert ids[0].startswith("cloud-graph-")
    assert guard_key(_payload(a)) == f"mailroom:guard:cloud:graph:{a}"


def test_ids_of_every_source_are_as_before() -> None:
    """Guard keys and job ids are stored state: an upgrade that changed them would queue a message again."""
    import dataclasses

    graph = _payload("AAk=")
    imap = dataclasses.replace(graph, mailbox="support", source="imap", uidvalidity=1712, uid=42)
    inject = dataclasses.replace(graph, source="inject", uid="0123abcd")
    assert (job_id_for(imap), guard_key(imap)) == ("support-1712-42", "mailroom:guard:support:1712:42")
    assert job_id_for(graph) == "cloud-graph-35bd14268f33242b7f4afd69e48a1cc9"
    assert guard_key(graph) == "mailroom:guard:cloud:graph:AAk="
    assert job_id_for(inject) == "cloud-inject-64eab0705394501ced0ff991bf69077f"
    assert guard_key(inject) == "mailroom:guard:cloud:inject:0123abcd"
