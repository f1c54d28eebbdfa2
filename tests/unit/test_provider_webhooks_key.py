"""The webhook signing key as a file that follows rotation: what a Kubernetes Secret volume does to it
(rewrite, ``..data`` symlink swap, a moment missing or empty) and what that costs per call."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from mailroom.config import ProviderConfig, read_secret_file
from mailroom.provider import webhooks
from mailroom.provider.webhooks import (
    FixedSigningKey,
    SigningKeyFile,
    create_app,
    signing_key_source,
)

OLD = "key-old-0123456789abcdef"
NEW = "key-new-fedcba9876543210"  # same length as OLD: only the mtime or inode tells them apart
SETTLED = time.time_ns() - 3600 * 10**9  # an mtime far enough back to be trusted


@pytest.fixture(autouse=True)
def _fresh_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The module's logger as capture_logs() sees it. capture_logs() replaces only the processors: an
    earlier test's logs.configure() in this process may have left a level filter (a CLI test with
    log_level: error) or a logger cached with its old processors, and the events escape capture."""
    structlog.reset_defaults()
    monkeypatch.setattr(webhooks, "log", structlog.get_logger("mailroom.provider.webhooks"))
    yield
    structlog.reset_defaults()


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = 1.0) -> None:
        self.now += seconds


class CountingReader:
    def __init__(self) -> None:
        self.reads = 0

    def __call__(self, path: Path) -> str:
        self.reads += 1
        return read_secret_file(path)


def write(path: Path, text: str, mtime_ns: int = SETTLED) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(mtime_ns, mtime_ns))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reader() -> CountingReader:
    return CountingReader()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "signing-key"
    write(path, OLD + "\n")
    return path


def source(path: Path, clock: Clock, reader: CountingReader) -> SigningKeyFile:
    return SigningKeyFile(path, check_interval=1.0, clock=clock, read=reader)


def test_rewritten_key_is_picked_up_at_the_next_check(
    key_file: Path, clock: Clock, reader: CountingReader
) -> None:
    keys = source(key_file, clock, reader)
    assert keys.current() == OLD
    write(key_file, NEW + "\n", SETTLED + 10**9)
    clock.advance(0.5)
    assert keys.current() == OLD  # not looked at yet: at most one check per interval
    clock.advance(0.5)
    assert keys.current() == NEW


def test_kubernetes_symlink_swap_is_picked_up(tmp_path: Path, clock: Clock, reader: CountingReader) -> None:
    """The kubelet writes a new timestamped directory, then renames a new ``..data`` link over the old."""
    for version, key in (("..v1", OLD), ("..v2", NEW)):
        (tmp_path / version).mkdir()
        write(tmp_path / version / "signing-key", key + "\n")  # same size, same mtime: only the inode differs
    (tmp_path / "..data").symlink_to("..v1")
    (tmp_path / "signing-key").symlink_to("..data/signing-key")
    keys = source(tmp_path / "signing-key", clock, reader)
    assert keys.current() == OLD
    (tmp_path / "..data_tmp").symlink_to("..v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    clock.advance()
    assert keys.current() == NEW


def test_unchanged_file_is_only_stated_never_read_again(
    key_file: Path, clock: Clock, reader: CountingReader
) -> None:
    keys = source(key_file, clock, reader)
    for _ in range(50):
        assert keys.current() == OLD
        clock.advance(0.3)
    assert reader.reads == 1  # the read at start-up


def test_calls_between_checks_do_not_touch_the_file(
    key_file: Path, clock: Clock, reader: CountingReader
) -> None:
    keys = source(key_file, clock, reader)
    key_file.unlink()
    with capture_logs() as logs:
        for _ in range(100):
            assert keys.current() == OLD
    assert logs == []  # no stat happened, or the missing file would have been noticed


def test_missing_file_keeps_the_last_key_and_warns_once(
    key_file: Path, clock: Clock, reader: CountingReader
) -> None:
    keys = source(key_file, clock, reader)
    with capture_logs() as logs:
        key_file.unlink()
        for _ in range(5):
            clock.advance()
            assert keys.current() == OLD
        write(key_file, NEW + "\n", SETTLED + 10**9)
        clock.advance()
        assert keys.current() == NEW
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("webhook_signing_key_unreadable", "warning"),
        ("webhook_signing_key_reloaded", "info"),
    ]
    assert logs[0]["path"] == str(key_file)
    assert not any(key in repr(logs) for key in (OLD, NEW))  # the key itself is never logged


@pytest.mark.parametrize("content", ["", "\n", "  \n"])
def test_empty_file_keeps_the_last_key(
    key_file: Path, clock: Clock, reader: CountingReader, content: str
) -> None:
    keys = source(key_file, clock, reader)
    with capture_logs() as logs:
        write(key_file, content, SETTLED + 10**9)
        clock.advance()
        assert keys.current() == OLD
        clock.advance()
        assert keys.current() == OLD
        write(key_file, OLD + "\n", SETTLED + 2 * 10**9)  # the swap completes with the same key
        clock.advance()
        assert keys.current() == OLD
    assert [e["event"] for e in logs] == [
        "webhook_signing_key_unreadable",
        "webhook_signing_key_readable_again",
    ]
    assert logs[0]["problem"] == "empty"


def test_a_second_outage_warns_again(key_file: Path, clock: Clock, reader: CountingReader) -> None:
    keys = source(key_file, clock, reader)
    with capture_logs() as logs:
        for mtime in (SETTLED + 10**9, SETTLED + 2 * 10**9):
            key_file.unlink()
            clock.advance()
            keys.current()
            write(key_file, OLD + "\n", mtime)
            clock.advance()
            keys.current()
    assert [e["event"] for e in logs].count("webhook_signing_key_unreadable") == 2


def test_file_that_is_not_utf8_keeps_the_last_key(
    key_file: Path, clock: Clock, reader: CountingReader
) -> None:
    keys = source(key_file, clock, reader)
    key_file.write_bytes(b"\xff\xfe garbage")
    clock.advance()
    assert keys.current() == OLD


def test_recently_written_file_is_read_again_though_its_stat_looks_the_same(
    key_file: Path, clock: Clock, reader: CountingReader
) -> None:
    """A rewrite within the filesystem's timestamp tick, at the same size and inode, leaves the stat as it
    was: a stat younger than KEY_RACY_SECONDS is not trusted, so the next check reads the file again."""
    fresh = time.time_ns()
    write(key_file, OLD + "\n", fresh)
    keys = source(key_file, clock, reader)
    write(key_file, NEW + "\n", fresh)  # same inode, size and mtime
    clock.advance()
    assert keys.current() == NEW
    assert reader.reads == 2


def test_start_up_needs_a_key(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        SigningKeyFile(empty)
    with pytest.raises(FileNotFoundError):
        SigningKeyFile(tmp_path / "missing")
    with pytest.raises(ValueError, match="required"):
        FixedSigningKey("")
    with pytest.raises(ValueError, match="required"):
        create_app(ProviderConfig(signing_key="x"), None, "")  # type: ignore[arg-type]


def test_config_chooses_the_source(key_file: Path) -> None:
    from_file = signing_key_source(ProviderConfig(signing_key_file=key_file))
    assert isinstance(from_file, SigningKeyFile) and from_file.current() == OLD
    inline = signing_key_source(ProviderConfig(signing_key="inline-key"))  # type: ignore[arg-type]
    assert isinstance(inline, FixedSigningKey) and inline.current() == "inline-key"
