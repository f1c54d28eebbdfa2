"""Who really sent a message, as the receiving server saw it: the envelope sender (``Return-Path``) and
whether SPF or DKIM passed for it (``Authentication-Results``, RFC 8601). Pure, no I/O.

A rejection reply goes to the envelope sender (RFC 3834 section 4), and only when the receiving server,
known by its authserv-id, vouches for that sender: SPF passed for the envelope sender's address or domain
(``smtp.mailfrom``), or a DKIM signature of its domain (``header.d``, the domain or a parent of it)
passed. A forged ``From`` or ``Return-Path`` then never makes mailroom send mail to a third party
(backscatter). Only the topmost ``Authentication-Results`` header with a trusted authserv-id counts: the
receiving server adds its own above everything the sender wrote (and should remove forged ones with its id).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Vouched", "envelope_sender", "vouch"]

_COMMENT = re.compile(r"\([^()]*\)")
_PROPERTY = re.compile(r'([A-Za-z0-9_.-]+)\s*=\s*("[^"]*"|[^\s;]+)')
MAX_VALUE_CHARS = 8192  # a longer header is not from a mail server


@dataclass(frozen=True)
class Vouched:
    sender: str | None  # the envelope sender (Return-Path), None when absent or null (<>)
    method: str | None  # "spf" or "dkim" when the trusted server vouches for it, else None
    why: str  # one line: what was found (for the record when nothing is sent)


def envelope_sender(headers: Sequence[tuple[str, str]]) -> str | None:
    """The address in the first ``Return-Path`` (None for ``<>`` or no such header)."""
    for name, value in headers:
        if name.lower() == "return-path":
            address = value.strip()[:MAX_VALUE_CHARS].strip("<> \t")
            return address if "@" in address and not any(c.isspace() for c in address) else None
    return None


def vouch(headers: Sequence[tuple[str, str]], trusted: Iterable[str]) -> Vouched:
    """Whether the receiving server (an ``Authentication-Results`` of a ``trusted`` authserv-id) shows SPF
    or DKIM passing for the envelope sender of ``headers`` ((name, value) pairs in message order)."""
    sender = envelope_sender(headers)
    if sender is None:
        return Vouched(None, None, "no envelope sender (Return-Path missing or <>)")
    ids = {i.lower() for i in trusted}
    if not ids:
        return Vouched(sender, None, "no trusted authserv-id configured (rejections.trusted_authserv_ids)")
    results = _trusted_results(headers, ids)
    if results is None:
        return Vouched(sender, None, "no Authentication-Results from a trusted authserv-id")
    domain = sender.rpartition("@")[2].lower()
    for method, result, props in results:
        if result != "pass":
            continue
        if method == "spf" and props.get("smtp.mailfrom", "").lower() in (sender.lower(), domain):
            return Vouched(sender, "spf", "spf=pass for the envelope sender")
        signer = props.get("header.d", "").lower()
        if method == "dkim" and signer and (domain == signer or domain.endswith("." + signer)):
            return Vouched(sender, "dkim", f"dkim=pass for {signer}")
    return Vouched(sender, None, "neither SPF nor DKIM passed for the envelope sender")


def _trusted_results(
    headers: Sequence[tuple[str, str]], ids: set[str]
) -> list[tuple[str, str, dict[str, str]]] | None:
    for name, value in headers:
        if name.lower() != "authentication-results":
            continue
        parts = _COMMENT.sub(" ", value[:MAX_VALUE_CHARS]).split(";")
        authserv = parts[0].split()
        if not authserv or authserv[0].lower() not in ids:
            continue
        results = []
        for part in parts[1:]:
            found = _PROPERTY.findall(part)
            if not found:
                continue
            (method, result), props = found[0], found[1:]
            results.append(
                (method.lower().split("/")[0], result.lower(), {k.lower(): v.strip('"') for k, v in props})
            )
        return results
    return None
