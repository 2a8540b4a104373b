"""Exclusive file locks that end with their holder (``flock`` on a lock file).

``acquire(path)`` takes an exclusive ``flock`` on ``path`` (created if absent) and writes the
holder into it (pid, host, start time); when another process holds it, it retries for
``timeout_s`` seconds and then raises ``LockBusy`` naming that holder. The kernel drops a flock
when its holder exits, however it dies (SIGKILL included), so a lock is never stale: a lock file
left behind by a killed process is simply taken over. ``release`` removes the file; a process
that was waiting and locked the removed file notices (its inode is no longer at ``path``) and
locks the new one, so two holders can never coexist.

Used for a sweep's output folder (one sweep at a time) and around the tuning cache's
read-modify-write (no lost entries when processes save at once).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

POLL_S = 0.01  # how often a waiting process retries a held lock
LOCK_MODE = 0o644


class LockBusy(RuntimeError):
    """Another live process holds the lock; ``holder`` says which (pid, host, since when)."""

    def __init__(self, path: Path, holder: str):
        self.path, self.holder = path, holder
        super().__init__(f"{path} is held by {holder}")


class FileLock:
    """A held lock (from ``acquire``); a context manager that releases it on exit."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # before unlocking: a waiter then sees the inode is gone
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder_text() -> str:
    """Who holds a lock taken by this process: pid, host and start time (UTC)."""
    since = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"pid {os.getpid()} on host {socket.gethostname()} since {since}"


def acquire(path, timeout_s: float = 0.0) -> FileLock:
    """Lock ``path`` exclusively (its folder must exist), waiting up to ``timeout_s`` seconds for
    another holder to finish; ``LockBusy`` names that holder when it does not."""
    path = Path(path)
    deadline = time.monotonic() + timeout_s
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, LOCK_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise LockBusy(path, _read_holder(path)) from None
            time.sleep(POLL_S)
            continue
        if _is_linked(fd, path):
            break
        os.close(fd)  # we locked a file its last holder removed on release: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, (holder_text() + "\n").encode())
    return FileLock(path, fd)


def _is_linked(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is still the file at ``path``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _read_holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process (it has not written its pid yet)"
