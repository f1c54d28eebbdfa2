"""Realistic benchmark mail: ~4 KB on average, a fixed mix of the shapes a reply-by-email inbox sees.

Four kinds in rotation, deterministic for a given index:
- a plain-text reply quoting the notification it answers (the common case),
- multipart/mixed with a small base64 attachment (a screenshot or log excerpt),
- multipart/alternative with an HTML part (what most mail clients send),
- a reply whose Subject and From display name are RFC 2047 encoded non-ASCII text.
Every message carries the reply key in its To address and In-Reply-To, as the application's own mail would.
"""

from __future__ import annotations

import base64
import random
from email.header import Header
from email.utils import formatdate

ADDRESS = "incoming+%{key}@example.com"
KINDS = ("plain", "attachment", "html", "non_ascii")

_WORDS = (
    "the build failed again after the merge please look at the pipeline logs before tomorrow we need "
    "a fix for the release branch thanks for the quick reply I attached the output of the failing job "
    "and a screenshot of the dashboard it happens only on the second runner when the cache is cold"
).split()


def _prose(rng: random.Random, size: int, width: int = 72) -> str:
    """ASCII prose of about ``size`` bytes, wrapped at ``width`` with CRLF line ends."""
    lines, line, total = [], "", 0
    while total < size:
        word = rng.choice(_WORDS)
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            total += len(line) + 2
            line = ""
        line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return "\r\n".join(lines)


def _headers(i: int, key: str, subject: str, sender: str) -> list[str]:
    return [
        "Return-Path: <alice@example.org>",
        f"Received: from mx.example.org (mx.example.org [192.0.2.{i % 250 + 1}]) by mail.example.com"
        f" with ESMTPS id {i:08x} for <{ADDRESS.replace('%{key}', key)}>; {formatdate(localtime=False)}",
        f"From: {sender}",
        f"To: App Notifications <{ADDRESS.replace('%{key}', key)}>",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=False)}",
        f"Message-ID: <bench-{i}-{key}@mail.example.org>",
        f"In-Reply-To: <reply-{key}@app.example.com>",
        f"References: <thread-{key}@app.example.com> <reply-{key}@app.example.com>",
        "MIME-Version: 1.0",
    ]


def message(i: int, key: str | None = None) -> bytes:
    """Message number ``i`` of the benchmark stream (kind ``KINDS[i % 4]``), about 4 KB."""
    rng = random.Random(i)
    key = key or f"bench{i:06d}"
    kind = KINDS[i % len(KINDS)]
    quote = "\r\n".join("> " + line for line in _prose(rng, 900).split("\r\n"))
    if kind == "non_ascii":
        subject = Header(f"Re: Überprüfung fehlgeschlagen – ошибка сборки #{i}", "utf-8").encode()  # noqa: RUF001
        sender = f"{Header('Zoë Ångström', 'utf-8').encode()} <zoe@example.org>"
    else:
        subject = f"Re: Build #{i} failed"
        sender = "Alice Example <alice@example.org>"
    head = _headers(i, key, subject, sender)
    if kind in ("plain", "non_ascii"):
        body = f"{_prose(rng, 2200)}\r\n\r\nOn Tue, 14 May 2024 at 10:00, App wrote:\r\n{quote}\r\n"
        parts = [
            *head,
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
            "",
            body,
        ]
    elif kind == "attachment":
        blob = base64.encodebytes(rng.randbytes(1200)).decode().replace("\n", "\r\n")
        boundary = f"=_bench_{i}"
        parts = [
            *head,
            f'Content-Type: multipart/mixed; boundary="{boundary}"',
            "",
            f"--{boundary}",
            "Content-Type: text/plain; charset=utf-8",
            "",
            _prose(rng, 1100),
            quote,
            f"--{boundary}",
            'Content-Type: application/octet-stream; name="job-output.log.gz"',
            "Content-Transfer-Encoding: base64",
            'Content-Disposition: attachment; filename="job-output.log.gz"',
            "",
            blob,
            f"--{boundary}--",
            "",
        ]
    else:
        text = _prose(rng, 1100)
        html = "".join(f"<p>{line}</p>\r\n" for line in _prose(rng, 1000).split("\r\n"))
        boundary = f"=_alt_{i}"
        parts = [
            *head,
            f'Content-Type: multipart/alternative; boundary="{boundary}"',
            "",
            f"--{boundary}",
            "Content-Type: text/plain; charset=utf-8",
            "",
            text,
            f"--{boundary}",
            "Content-Type: text/html; charset=utf-8",
            "",
            f"<html><body>{html}<blockquote>{quote}</blockquote></body></html>",
            f"--{boundary}--",
            "",
        ]
    return "\r\n".join(parts).encode("utf-8")


def messages(count: int, start: int = 0) -> list[bytes]:
    return [message(i) for i in range(start, start + count)]


def done_filler(i: int) -> bytes:
    """A small already-handled message for the scaling mailboxes (never fetched, so its size is moot)."""
    return (
        f"From: old@example.org\r\nTo: {ADDRESS.replace('%{key}', f'old{i}')}\r\nSubject: old {i}\r\n"
        f"Message-ID: <old-{i}@example.org>\r\n\r\nhandled long ago\r\n"
    ).encode()


def big_message(size: int) -> bytes:
    """One message of about ``size`` bytes: a short text part and a large base64 attachment."""
    raw_len = size * 57 // 78  # base64 lines: 57 bytes become 76 characters and CRLF
    blob = base64.encodebytes(random.Random(size).randbytes(raw_len)).replace(b"\n", b"\r\n")
    head = "\r\n".join(
        [
            *_headers(0, "bigkey", "Re: the full crash dump", "Alice Example <alice@example.org>"),
            'Content-Type: multipart/mixed; boundary="=_big"',
            "",
            "--=_big",
            "Content-Type: text/plain; charset=utf-8",
            "",
            "The dump is attached.",
            "--=_big",
            'Content-Type: application/octet-stream; name="core.bin"',
            "Content-Transfer-Encoding: base64",
            "",
            "",
        ]
    ).encode()
    return head + blob + b"--=_big--\r\n"
