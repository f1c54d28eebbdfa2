"""Reply keys: which application conversation an incoming message belongs to.

Pure, no I/O. The rules follow GitLab (``lib/gitlab/email/receiver.rb`` and
``lib/gitlab/incoming_email.rb``):

* The application sends mail from an address template such as ``incoming+%{key}@example.com``. A plain
  address without ``%{key}`` (``support@example.com``, for a catch-all handler) is allowed: its mail
  simply has no key (none is looked for, not even in ``References``).
  The template is taken literally (``.`` and ``+`` are not regex operators); ``%{key}`` stands for one or
  more characters other than ``@`` in the local part. The whole address must match; the domain is compared
  case-insensitively, the local part case-sensitively.
* Candidates come from the address headers in :data:`KEY_HEADERS` order, every address of every occurrence
  in message order; for ``Received`` only the ``for <addr>`` clause counts. The first match wins.
* Failing that, the message ids in ``References`` then ``In-Reply-To`` are tried: the application sets its
  own Message-ID to ``reply-KEY@host`` (:func:`reply_message_id`), and a reply quotes it back. Unlike GitLab,
  any host is accepted, because this library does not know the application's host name.

Everything here is linear in the size of its input: GitLab once had a ReDoS in its ``Received`` regex, and
this code runs on every message in the IMAP watcher. ``email.utils.getaddresses`` is linear too but slow
(microseconds per character), so it reads at most :data:`ADDRESS_BUDGET_CHARS` per message (an
:class:`AddressBudget`); the usual shapes never reach it, and past the budget a rough linear reader takes
over.

A key is printable ASCII without spaces, at most :data:`MAX_KEY_CHARS` characters (:func:`key_problem`): a
candidate that is not is refused with the reason, and the search goes on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import getaddresses

__all__ = [
    "KEY_HEADERS",
    "REFERENCE_HEADERS",
    "AddressBudget",
    "AddressTemplate",
    "ReplyKey",
    "find_reply_key",
    "find_reply_key_by_name",
    "key_problem",
    "reply_message_id",
]

KEY_PLACEHOLDER = "%{key}"

KEY_HEADERS: tuple[str, ...] = (
    "To",
    "Delivered-To",
    "X-Delivered-To",
    "Envelope-To",
    "X-Envelope-To",
    "X-Original-To",
    "X-Forwarded-To",
    "Received",
    "Cc",
)
REFERENCE_HEADERS: tuple[str, ...] = ("References", "In-Reply-To")
# (canonical, lowercase) pairs, in the order above, for find_reply_key_by_name.
_KEY_NAMES = tuple((name, name.lower()) for name in KEY_HEADERS)
_REFERENCE_NAMES = tuple((name, name.lower()) for name in REFERENCE_HEADERS)

# email.utils.getaddresses costs up to ~3 µs per character and recurses on nested comments, so only the
# start of a hostile header is handed to it, and at most ADDRESS_BUDGET_CHARS of a message's headers in all.
# The usual shapes (addresses, "Name <address>", lists of them) never reach it.
MAX_ADDRESS_HEADER_CHARS = 64 * 1024
ADDRESS_BUDGET_CHARS = 16 * 1024
# The rough reader is fast but still a Python step per token: past this many characters read roughly, a
# message's remaining unusual address headers are not read at all.
ROUGH_BUDGET_CHARS = 256 * 1024
# Longer than any reply key an application sends (GitLab's are 32 hex digits); the same bound as the
# stored fields' (mailroom.message.MAX_FIELD_CHARS is larger), so a key is never cut, only refused.
MAX_KEY_CHARS = 256

# Both patterns are linear: one character class each, no nested or adjacent overlapping repeats.
_MESSAGE_ID = re.compile(r"<([^<>]*)>")
# The usual shapes of an address header, ``addr`` and ``Display Name <addr>`` with no quotes, comments or
# groups, and comma-separated lists of them, read without getaddresses (the watcher's hot path); anything
# else goes to getaddresses. Linear: the display name cannot contain ``<`` or ``@``, so it cannot overlap
# the address, and it starts with a non-space, so it cannot overlap the spaces before it either.
_ADDR = r'[^\s<>"(),;:\\@\[\]]+@[^\s<>"(),;:\\@\[\]]+'
_NAME = r'(?:[^\s<>"(),;:\\@\[\]][^<>"(),;:\\@\[\]]*)?'
_ITEM = rf"\s*(?:({_ADDR})|{_NAME}<\s*({_ADDR})\s*>)\s*"
_SIMPLE_ADDRESS = re.compile(_ITEM)
# A list may have empty items ("a@b, , c@d,"), which getaddresses skips as well.
_ITEM_OR_EMPTY = rf"(?:{_ITEM}|\s*)"
_SIMPLE_LIST = re.compile(rf"{_ITEM_OR_EMPTY}(?:,{_ITEM_OR_EMPTY})+")
_LIST_ITEM = re.compile(rf"(?:^|,){_ITEM_OR_EMPTY}")
# Past the budget: every token with an ``@`` is an address (split in C, linear).
_ROUGH_SPLIT = re.compile(r'[\s<>"(),;:\\\[\]]+')
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space
_REPLY_ID = re.compile(r"reply-([^@]+)@[^@]+")


@dataclass(frozen=True)
class AddressTemplate:
    """An address with one ``%{key}`` placeholder in its local part, e.g. ``incoming+%{key}@example.com``."""

    template: str
    _prefix: str = field(init=False, repr=False, compare=False)
    _suffix: str = field(init=False, repr=False, compare=False)
    _domain: str = field(init=False, repr=False, compare=False)
    _local: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        template = self.template
        count = template.count(KEY_PLACEHOLDER)
        if count > 1:
            raise ValueError(
                f"address template {template!r} must contain {KEY_PLACEHOLDER} at most once (found {count})"
            )
        local, at, domain = template.rpartition("@")
        if not at or not local or not domain:
            raise ValueError(f"address template {template!r} must be an address: local-part@domain")
        if KEY_PLACEHOLDER in domain:
            raise ValueError(f"address template {template!r}: {KEY_PLACEHOLDER} must be in the local part")
        if any(ch.isspace() for ch in template):
            raise ValueError(f"address template {template!r} must not contain whitespace")
        prefix, _, suffix = local.partition(KEY_PLACEHOLDER)
        # Set derived fields on a frozen instance: computed once, never changed afterwards.
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_suffix", suffix)
        object.__setattr__(self, "_domain", domain.lower())
        pattern = re.compile(re.escape(prefix) + "([^@]+)" + re.escape(suffix))
        object.__setattr__(self, "_local", pattern)

    @property
    def has_key(self) -> bool:
        """False for a plain address (``support@example.com``, a catch-all): its mail carries no key."""
        return KEY_PLACEHOLDER in self.template

    @classmethod
    def parse(cls, template: str) -> AddressTemplate:
        """Validate ``template``; :class:`ValueError` names what is wrong with it."""
        if not isinstance(template, str):
            raise ValueError(f"address template must be a string, not {type(template).__name__}")
        return cls(template.strip())

    def key_from_address(self, address: str) -> str | None:
        """The key in ``address`` if it matches the template, else ``None`` (always, without a key)."""
        if not self.has_key:
            return None
        address = address.strip()
        if address.startswith("<") and address.endswith(">"):
            address = address[1:-1].strip()
        local, at, domain = address.rpartition("@")
        if not at or domain.lower() != self._domain:
            return None
        match = self._local.fullmatch(local)
        return match.group(1) if match else None

    def fill(self, key: str) -> str:
        """The address for ``key``: the template with ``%{key}`` replaced."""
        if not self.has_key:
            raise ValueError(f"address {self.template!r} has no {KEY_PLACEHOLDER} to put a reply key in")
        return self.template.replace(KEY_PLACEHOLDER, key)


@dataclass(frozen=True)
class ReplyKey:
    key: str
    header: str  # canonical case, as spelled in KEY_HEADERS / REFERENCE_HEADERS


def reply_message_id(key: str, host: str) -> str:
    """The Message-ID (without angle brackets) the application sets so replies carry the key back."""
    return f"reply-{key}@{host}"


class AddressBudget:
    """How many more characters ``getaddresses`` (:data:`ADDRESS_BUDGET_CHARS`), then the rough reader
    (:data:`ROUGH_BUDGET_CHARS`), may read for one message.

    ``rough`` and ``skipped`` say whether a header was read roughly, or not at all, for the caller to report.
    """

    __slots__ = ("left", "rough", "rough_left", "skipped")

    def __init__(self, chars: int = ADDRESS_BUDGET_CHARS, rough_chars: int = ROUGH_BUDGET_CHARS) -> None:
        self.left = chars
        self.rough_left = rough_chars
        self.rough = False
        self.skipped = False

    def take(self, chars: int) -> bool:
        """True (and ``chars`` spent) if ``chars`` more fit in the budget."""
        if chars > self.left:
            self.rough = True
            return False
        self.left -= chars
        return True

    def take_rough(self, chars: int) -> bool:
        """True (and ``chars`` spent) if ``chars`` more fit in the rough reader's budget."""
        if chars > self.rough_left:
            self.skipped = True
            return False
        self.rough_left -= chars
        return True


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a reply key, or None: keys are printable ASCII without spaces (no NUL, no
    control or non-ASCII characters that could reach an application's lookup or a terminal), and at most
    :data:`MAX_KEY_CHARS` long."""
    if len(key) > MAX_KEY_CHARS:
        return f"longer than {MAX_KEY_CHARS} characters"
    if _KEY_CHARS.fullmatch(key):
        return None
    if "\x00" in key:
        return "contains a NUL character"
    if not key.isascii():
        return "contains non-ASCII characters"
    if any(ch.isspace() for ch in key):
        return "contains whitespace"
    return "contains control characters"


def find_reply_key(headers: Sequence[tuple[str, str]], template: AddressTemplate) -> ReplyKey | None:
    """The first reply key in ``headers`` by GitLab's header order, and the header it came from.

    ``headers`` are (name, value) pairs in message order; names in any case, values as str (unfolded or
    not; RFC 2047 decoding is optional, since addr-specs and message ids are never encoded words).
    """
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.strip().lower(), []).append(value)
    return find_reply_key_by_name(by_name, template)


def find_reply_key_by_name(
    by_name: Mapping[str, Sequence[str]],
    template: AddressTemplate,
    budget: AddressBudget | None = None,
    problems: list[str] | None = None,
) -> ReplyKey | None:
    """:func:`find_reply_key` for headers already grouped: lowercase name -> values in message order.

    A candidate key that :func:`key_problem` refuses is skipped (the reason goes to ``problems``).
    """
    budget = budget if budget is not None else AddressBudget()
    if not template.has_key:
        return None  # a catch-all address: its mail has no reply key, by configuration
    for header, lowered in _KEY_NAMES:
        for value in by_name.get(lowered, ()):
            if template._domain not in value.lower():
                continue  # no address here can match: skip parsing it
            candidates = received_for(value) if header == "Received" else addresses(value, budget=budget)
            for candidate in candidates:
                key = template.key_from_address(candidate)
                if key and _acceptable(key, header, problems):
                    return ReplyKey(key, header)

    for header, lowered in _REFERENCE_NAMES:
        for value in by_name.get(lowered, ()):
            for message_id in message_ids(value):
                match = _REPLY_ID.fullmatch(message_id)
                if match and _acceptable(match.group(1), header, problems):
                    return ReplyKey(match.group(1), header)
    return None


def _acceptable(key: str, header: str, problems: list[str] | None) -> bool:
    problem = key_problem(key)
    if problem is None:
        return True
    if problems is not None:
        problems.append(f"reply key in {header} refused: {problem}")
    return False


def addresses(value: str, *, require_at: bool = True, budget: AddressBudget | None = None) -> list[str]:
    """The bare addr-specs in one address header value; never raises, bounded work on hostile input.

    ``require_at=False`` also returns local-only addresses (``MAILER-DAEMON``), as getaddresses does.
    ``budget`` is the message's (see :class:`AddressBudget`); without one, this value gets a fresh one.
    """
    if require_at and "@" not in value:
        return []
    simple = _SIMPLE_ADDRESS.fullmatch(value)
    if simple:
        return [simple.group(1) or simple.group(2)]
    if "," in value and _SIMPLE_LIST.fullmatch(value):
        return [addr for m in _LIST_ITEM.finditer(value) if (addr := m.group(1) or m.group(2))]
    value = value[:MAX_ADDRESS_HEADER_CHARS]
    budget = budget if budget is not None else AddressBudget()
    if not budget.take(len(value)):
        return rough_addresses(value) if budget.take_rough(len(value)) else []
    try:
        pairs = getaddresses([value])
    except (RecursionError, ValueError, IndexError, TypeError):
        return []
    return [addr for _, addr in pairs if addr]


def rough_addresses(value: str) -> list[str]:
    """Every token with an ``@`` in ``value``, in linear time, for a header past the budget: quoted strings,
    comments and groups are not told apart."""
    return [token for token in _ROUGH_SPLIT.split(value) if "@" in token] if "@" in value else []


def received_for(value: str) -> Iterator[str]:
    """Addresses in the ``for <addr>`` / ``for addr`` clauses of a Received header value.

    Plain token scanning instead of GitLab's ``for\\s+<([^<]+)>``: linear on any input.
    """
    tokens = value.split()
    for i, token in enumerate(tokens):
        lowered = token.lower()
        if lowered == "for" and i + 1 < len(tokens):
            candidate = tokens[i + 1]
        elif lowered.startswith("for<"):
            candidate = token[3:]
        else:
            continue
        candidate = candidate.strip(";,").strip("<>")
        if "@" in candidate:
            yield candidate


def message_ids(value: str) -> list[str]:
    """Message ids in a References / In-Reply-To value.

    Ids are the text between ``<`` and ``>``, so Exchange's and iOS's comma-joined lists work. A value
    with no brackets at all (some broken clients) is split on whitespace and commas instead.
    """
    ids = [i for m in _MESSAGE_ID.findall(value) if (i := m.strip())]
    if not ids and "<" not in value:  # no brackets at all ("<>" and "< >" are empty ids, not a missing one)
        ids = [i for i in re.split(r"[\s,]+", value) if i]
    return ids
