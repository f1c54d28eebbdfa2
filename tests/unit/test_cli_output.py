"""What the CLI prints: tables that fit 120 columns, cleaned cells, server replies as words."""

from __future__ import annotations

import imaplib

import pytest
from imapclient.exceptions import LoginError

from mailroom.cli.output import WIDTH, Table, clean, cut, fit, printable
from mailroom.errors import ImapAuthError, ImapError
from mailroom.imap.session import _translated


def test_fit_shrinks_the_widest_free_column_first():
    widths = fit([46, 10, 80, 60, 19], fixed=[True, False, False, False, True])
    assert sum(widths) + 2 * 4 <= WIDTH
    assert widths[0] == 46 and widths[4] == 19  # ids and times kept whole
    assert widths[1] == 10  # a narrow column is not touched while wider ones can give


def test_a_table_fits_and_cuts_with_an_ellipsis(capsys):
    table = Table(["JOB ID", "SUBJECT", "ERROR"], fixed=["JOB ID"])
    table.add(["support-inject-" + "a" * 32, "s" * 200, "Traceback\n  ValueError: " + "e" * 200])
    table.add(["short", None, "\x1b[31mred\x1b[0m"])
    table.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(len(line) <= WIDTH for line in lines)
    assert "…" in lines[1] and "support-inject-" + "a" * 32 in lines[1]
    assert "\x1b" not in lines[2] and "\\x1b[31mred\\x1b[0m" in lines[2]  # shown, never sent
    assert lines[2].split()[1] == "-"  # an empty cell shows as -


def test_clean_and_cut():
    assert clean("a\r\n  b\tc\x00\x07") == "a b c\\x00\\x07"
    assert cut("abcdef", 4) == "abc…" and cut("abc", 4) == "abc"


@pytest.mark.parametrize(
    ("raised", "kind", "text"),
    [
        (LoginError(str(b"[AUTHENTICATIONFAILED] Authentication failed.")), ImapAuthError,
         "login refused: [AUTHENTICATIONFAILED] Authentication failed."),
        (imaplib.IMAP4.error(str(b"[UNAVAILABLE] Temporary failure")), ImapError,
         "select failed: error: [UNAVAILABLE] Temporary failure"),
        (ConnectionRefusedError(111, "Connection refused"), ImapError,
         "select failed: ConnectionRefusedError: [Errno 111] Connection refused"),
    ],
)  # fmt: skip
def test_server_replies_are_words_not_bytes_reprs(raised, kind, text):
    with pytest.raises(kind) as caught, _translated("select"):
        raise raised
    assert str(caught.value) == text


def test_printable_keeps_lines_and_indentation():
    assert printable('Traceback:\n  File "x", line 1\x1b[2J\n\tValueError: \x07bad') == (
        'Traceback:\n  File "x", line 1\\x1b[2J\n\tValueError: \\x07bad'
    )
