"""terminal.sanitize: nothing a terminal would take as a command survives, the text stays readable."""

from __future__ import annotations

import pytest

from mailroom.terminal import sanitize, sanitize_values


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, café", "plain text, café"),
        ("\x1b[2K\x1b[1Aowned", "\\x1b[2K\\x1b[1Aowned"),
        ("a\x00b\x7fc\x9bd", "a\\x00b\\x7fc\\x9bd"),
        ("evil\u202egnp.exe", "evil\\u202egnp.exe"),  # a bidi override reorders what follows it
        ("two\nlines\r", "two\\nlines\\r"),
    ],
)
def test_sanitize(text, shown):
    assert sanitize(text) == shown and sanitize(shown) == shown


def test_tracebacks_keep_their_lines():
    event = {"exception": "Traceback\n  line\x1b[2K", "subject": "a\nb", "n": 3}
    assert sanitize_values(None, "info", event) == {
        "exception": "Traceback\n  line\\x1b[2K",
        "subject": "a\\nb",
        "n": 3,
    }
