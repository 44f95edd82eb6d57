"""Locks: :class:`DirLock` keeps a second process out of an output folder, :func:`waiting_lock` queues them.

Both are ``flock`` locks, which the kernel drops when their process dies: a killed run never
blocks the folder for the next one.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ai4life_kit.errors import UserInputError

try:
    import fcntl
except ImportError:  # Windows: no flock; DirLock then only records who runs, it cannot exclude
    fcntl = None  # type: ignore[assignment]

__all__ = ["DirLock", "waiting_lock"]


@contextlib.contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed), waiting for other holders.

    For work that a second process should wait for rather than refuse (installing a shared
    runtime, building a shared base image); :class:`DirLock` is the non-blocking kind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        if fcntl is None:  # Windows: nothing to wait for
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class DirLock:
    """An exclusive, non-blocking lock on a folder: ``flock`` on a lock file inside it.

    Parameters
    ----------
    path
        The lock file (its folder must exist). It holds the holder's pid, host and start time, which
        the error of a second process quotes.

    :meth:`acquire` fails at once, with a one-line :class:`UserInputError` naming the holder, when
    another process (or another :class:`DirLock` of this process) holds the lock. The kernel drops a
    ``flock`` when its process dies, so a killed run never blocks the folder: its lock file stays
    behind, but the next process takes it over. :meth:`release` deletes the file while still
    holding the lock; :meth:`acquire` therefore checks that the file it locked is still the one at
    ``path`` (not one a releasing holder just unlinked) and otherwise starts over.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (a no-op if this object holds it already).

        Raises
        ------
        UserInputError
            If another process holds it, or the file cannot be created or locked.
        """
        if self._fd is not None:
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise UserInputError(f"cannot create the lock file {self.path}: {exc.strerror}") from None
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise UserInputError(
                    f"{self.path.parent} is in use by another ai4life-kit process ({holder}); "
                    "wait for it to finish or stop it"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise UserInputError(f"cannot lock {self.path}: {exc.strerror}") from None
            try:
                same = os.path.samestat(os.stat(self.path), os.fstat(fd))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # locked a file its last holder had already unlinked: lock the new one
        self._fd = fd
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode("utf-8"))

    def release(self) -> None:
        """Delete the lock file and drop the lock (a no-op if this object does not hold it)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # before closing: nobody may lock this file and find it gone unseen
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _lock_holder(fd: int) -> str:
    """``pid N on HOST since TIME`` from a lock file, or what is known of it."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode("utf-8"))
        return f"pid {info['pid']} on {info['host']} since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        # The holder has just created the file and not written to it yet.
        return "holder not yet recorded"
