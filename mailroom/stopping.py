"""A stop request that a thread blocked in poll() on its socket hears at once.

A watcher in IDLE waits on its IMAP socket. Waking up every second to look at a ``threading.Event``
costs a few hundred microseconds of CPU per mailbox per minute of nothing happening (most of an idle
replica's CPU at hundreds of mailboxes, bench/many.py); :class:`StopEvent` is a ``threading.Event``
with a file descriptor that becomes readable when it is set, so the watcher can wait on both at once
for as long as it likes and still stop promptly.
"""

from __future__ import annotations

import os
import threading
import weakref


class StopEvent(threading.Event):
    """A ``threading.Event`` whose :meth:`fileno` is readable (and stays so) once it is set."""

    def __init__(self) -> None:
        super().__init__()
        if hasattr(os, "eventfd"):  # Linux: one descriptor
            self._read = self._write = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:
            self._read, self._write = os.pipe()
            os.set_blocking(self._read, False)
            os.set_blocking(self._write, False)
        self._closer = weakref.finalize(self, _close, {self._read, self._write})

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        was_set = self.is_set()
        super().set()
        if not was_set:
            try:
                os.write(self._write, (1).to_bytes(8, "little"))  # eventfd takes 8 bytes; a pipe any
            except BlockingIOError:
                pass  # already readable

    def clear(self) -> None:
        super().clear()
        try:
            while os.read(self._read, 8):
                pass
        except BlockingIOError:
            pass


def wakeup_fd(event: threading.Event) -> int | None:
    """The descriptor that becomes readable when ``event`` is set, if it has one."""
    return event.fileno() if isinstance(event, StopEvent) else None


def _close(fds: set[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
