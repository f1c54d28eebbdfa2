"""mailroom.imap.wire reads UID FETCH responses itself; imapclient's parser is the reference it must agree
with, on generated responses in every shape RFC 3501 allows for the items the watcher asks for."""

from __future__ import annotations

import imaplib
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imapclient.response_parser import parse_fetch_response

from mailroom.imap.wire import Fetched, ProtocolError, collect_messages, parse_internaldate, read_responses

TAG = b"A7"
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


@dataclass
class Response:
    """One server response as bytes on the wire and as imaplib hands it to imapclient."""

    wire: bytes
    imaplib_shape: list[object]  # the items imaplib's uid("FETCH") returns for it


def stream(*responses: Response, end: bytes = TAG + b" OK Fetch completed.\r\n") -> io.BytesIO:
    return io.BytesIO(b"".join(r.wire for r in responses) + end)


def ours(wire: io.BytesIO) -> tuple[list[Fetched], dict[str, list[object]]]:
    untagged: dict[str, list[object]] = {}
    result = collect_messages(read_responses(wire.readline, wire.read, TAG), untagged)
    assert not result.left
    return result.messages, untagged


def fetch_response(number: int, pieces: list[tuple[bytes, bytes | None]]) -> Response:
    """``* number FETCH`` + pieces: (text, literal or None); the text before a literal ends with it."""
    wire = b"* %d FETCH " % number
    shape: list[object] = []
    head = b"%d " % number  # imaplib drops "* " and the response type
    for text, literal in pieces:
        if literal is None:
            wire += text + b"\r\n"
            shape.append(head + text)
        else:
            marker = b"{%d}" % len(literal)
            wire += text + marker + b"\r\n" + literal
            shape.append((head + text + marker, literal))
        head = b""
    return Response(wire, shape)


def quoted(data: bytes) -> bytes:
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


dates = st.builds(
    lambda day, month, year, h, m, s, sign, zh, zm, pad: (
        f"{day:2d}" if pad else f"{day:02d}",
        MONTHS[month],
        year,
        h,
        m,
        s,
        f"{sign}{zh:02d}{zm:02d}",
    ),
    st.integers(1, 28),
    st.integers(0, 11),
    st.integers(1990, 2100),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.sampled_from("+-"),
    st.integers(0, 14),
    st.sampled_from([0, 30, 45]),
    st.booleans(),
)
bodies = st.binary(max_size=300) | st.sampled_from(
    [b"", b")", b"{5}\r\n", b"A7 OK fake\r\n", b"* 3 EXISTS\r\n"]
)


@st.composite
def messages(draw: st.DrawFn, number: int) -> tuple[Response, int, bytes | None, tuple[object, ...] | None]:
    uid = draw(st.integers(1, 2**32 - 1))
    body = draw(bodies | st.none())  # None: BODY[] NIL (expunged meanwhile)
    date = draw(dates | st.none())
    flags = draw(st.lists(st.sampled_from([b"\\Seen", b"\\Flagged", b"$Label"]), max_size=3, unique=True))
    items: list[tuple[bytes, bytes | None, bool]] = [(b"UID %d" % uid, None, False)]
    if date is not None:
        day, month, year, hour, minute, second, zone = date
        stamp = f"{day}-{month}-{year} {hour:02d}:{minute:02d}:{second:02d} {zone}"
        items.append((b'INTERNALDATE "' + stamp.encode() + b'"', None, False))
    if body is None:
        items.append((b"BODY[] NIL", None, False))
    elif draw(st.booleans()) and b"\r" not in body and b"\n" not in body and b"\x00" not in body:
        items.append((b"BODY[] " + quoted(body), None, False))
    else:
        items.append((b"BODY[] ", body, True))
    if draw(st.booleans()):
        items.append((b"FLAGS (" + b" ".join(flags) + b")", None, False))
    order = draw(st.permutations(items))
    pieces: list[tuple[bytes, bytes | None]] = []
    text = b"("
    for k, (item, literal, is_literal) in enumerate(order):
        text += (b" " if k else b"") + item
        if is_literal:
            pieces.append((text, literal))
            text = b""
    pieces.append((text + b")", None))
    return fetch_response(number, pieces), uid, body, date


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_agrees_with_imapclient_on_generated_responses(data: st.DataObject) -> None:
    count = data.draw(st.integers(1, 4))
    drawn = [data.draw(messages(n + 1)) for n in range(count)]
    uids = [uid for _, uid, _, _ in drawn]
    if len(set(uids)) != len(uids):
        return  # imapclient keys by UID: duplicates are not a shape a server sends
    responses = [r for r, _, _, _ in drawn]
    exists = Response(b"* 9 EXISTS\r\n", [])
    fetched, untagged = ours(stream(responses[0], exists, *responses[1:]))

    shaped = [item for r in responses for item in r.imaplib_shape]
    reference = parse_fetch_response(shaped, normalise_times=False, uid_is_key=True)
    expected = {
        uid: (items[b"BODY[]"], items.get(b"INTERNALDATE"))
        for uid, items in reference.items()
        if items.get(b"BODY[]") is not None
    }
    got = {m.uid: (m.body, m.internaldate) for m in fetched}
    assert got.keys() == expected.keys()
    for uid, (body, date) in got.items():
        assert body == expected[uid][0]
        assert date == expected[uid][1]
        if date is not None:
            assert date.utcoffset() == expected[uid][1].utcoffset()
    assert untagged == {"EXISTS": [b"9"]}


def test_one_message_split_over_two_fetch_responses_is_merged() -> None:
    first = fetch_response(4, [(b"(UID 12 BODY[] ", b"Subject: x\r\n\r\nhi"), (b")", None)])
    second = fetch_response(4, [(b'(UID 12 INTERNALDATE "01-Feb-2026 10:00:00 +0100")', None)])
    flags_only = fetch_response(5, [(b"(FLAGS (\\Seen) UID 13)", None)])
    fetched, _ = ours(stream(first, flags_only, second))
    assert [(m.uid, m.body) for m in fetched] == [(12, b"Subject: x\r\n\r\nhi")]
    assert fetched[0].internaldate == datetime(2026, 2, 1, 10, 0, tzinfo=timezone(timedelta(hours=1)))


@pytest.mark.parametrize("after_body", [b")", b" FLAGS (\\Seen))", b" RFC822.SIZE 3)"])
def test_the_usual_shape_and_items_after_the_body(after_body: bytes) -> None:
    date = b'"01-Feb-2026 10:00:00 +0000"'
    response = fetch_response(1, [(b"(UID 5 INTERNALDATE " + date + b" BODY[] ", b"abc"), (after_body, None)])
    fetched, _ = ours(stream(response))
    assert [(m.uid, m.body, m.internaldate) for m in fetched] == [
        (5, b"abc", datetime(2026, 2, 1, 10, tzinfo=UTC))
    ]


def test_status_responses_and_their_literals_are_skipped() -> None:
    status = Response(b"* OK [ALERT] {5}\r\nhello\r\n* NO warning\r\n", [])
    message = fetch_response(1, [(b"(UID 3 BODY[] ", b"x"), (b")", None)])
    fetched, untagged = ours(stream(status, message))
    assert [m.uid for m in fetched] == [3]
    assert untagged == {}


def test_bodies_keep_refuses_are_dropped_as_they_stream_and_listed_with_their_size() -> None:
    sizes = {1: 10, 2: 3_000_000, 3: 20}  # the middle one spans several read pieces
    wire = stream(
        *(
            fetch_response(
                uid,
                [
                    (b"(UID %d BODY[] " % uid, bytes([64 + uid]) * size),
                    (b' INTERNALDATE "01-Feb-2026 10:00:00 +0000")', None),
                ],
            )
            for uid, size in sizes.items()
        )
    )
    asked: list[int] = []

    def keep(size: int) -> bool:
        asked.append(size)
        return size < 1000

    result = collect_messages(read_responses(wire.readline, wire.read, TAG, keep), {})
    assert asked == [10, 3_000_000, 20]
    assert [(m.uid, m.body) for m in result.messages] == [(1, b"A" * 10), (3, b"C" * 20)]
    assert result.left == {2: 3_000_000}
    assert wire.read() == b""  # everything was consumed, up to the tagged OK


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (TAG + b" NO [SERVERBUG] Internal error\r\n", imaplib.IMAP4.error),
        (TAG + b" BAD Error in IMAP command\r\n", imaplib.IMAP4.error),
        (b"* BYE shutting down\r\n", imaplib.IMAP4.abort),
        (b"* 1 FETCH (UID 3 BODY[] {10}\r\nshort", imaplib.IMAP4.abort),  # EOF inside the literal
        (b"* 1 FETCH (UID 3 BODY[] {1}\r\nx\r\n", ProtocolError),  # the list is never closed
        (b"* 1 FETCH (UID 3 BODY[] {1}\r\nx))\r\n", ProtocolError),
        (b"* 2 FETCH (UID x3 BODY[] {1}\r\nx)\r\n" + TAG + b" OK done\r\n", ProtocolError),
        (b"+ go ahead\r\n", ProtocolError),
        (b"* 1 FETCH (UID 3 BODY[] {1}\r\nx)", ProtocolError),  # a line without its end
        (b"", imaplib.IMAP4.abort),  # the server hung up
    ],
)
def test_what_cannot_be_trusted_raises(wire: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        ours(io.BytesIO(wire))


def test_protocol_errors_are_aborts_so_the_session_is_dropped() -> None:
    assert issubclass(ProtocolError, imaplib.IMAP4.abort)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"25-Nov-2026 15:03:53 +0000", datetime(2026, 11, 25, 15, 3, 53, tzinfo=UTC)),
        (
            b" 5-nov-2026 01:02:03 -0530",
            datetime(2026, 11, 5, 1, 2, 3, tzinfo=timezone(-timedelta(hours=5, minutes=30))),
        ),
        (b"31-Feb-2026 00:00:00 +0000", None),
        (b"25-Nox-2026 15:03:53 +0000", None),
        (b"25-Nov-2026 15:03:53 0000", None),
        (b"25-Nov-2026 15:03:53", None),
        (b"", None),
    ],
)
def test_internaldate(text: bytes, expected: datetime | None) -> None:
    assert parse_internaldate(text) == expected
