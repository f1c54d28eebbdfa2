"""The handler API comes from ``mailroom``; the watcher never loads the worker; devstack is not installed."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_handler_api_is_importable_from_mailroom() -> None:
    from mailroom import IncomingEmail, PermanentHandlerError, RejectMessage, TransientHandlerError
    from workers.errors import PermanentHandlerError as Permanent
    from workers.incoming import IncomingEmail as Incoming

    assert IncomingEmail is Incoming and PermanentHandlerError is Permanent
    assert issubclass(RejectMessage, PermanentHandlerError) and issubclass(TransientHandlerError, Exception)


def test_the_watcher_side_does_not_import_the_worker() -> None:
    code = "import sys, mailroom.app, mailroom.cli; print(sorted(m for m in sys.modules if 'workers' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_devstack_is_not_a_package_of_the_distribution() -> None:
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert "devstack*" not in find["include"] and "mailroom*" in find["include"]
