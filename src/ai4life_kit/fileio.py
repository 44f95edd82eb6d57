"""Atomic file output: write to a temporary name in the target folder, then rename.

A crash, a ``kill -9`` or a full disk therefore never leaves a half-written file under the
final name, and an existing file is only replaced when the caller allows it. :class:`DirLock`
keeps a second process from writing into the same output folder at the same time.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ai4life_kit.errors import OutputExistsError, UserInputError

try:
    import fcntl
except ImportError:  # Windows: no flock; DirLock then only records who runs, it cannot exclude
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DirLock",
    "waiting_lock",
    "apply_umask_mode",
    "umask_file_mode",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "prepare_output_dir",
]


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def umask_file_mode() -> int:
    """The permission bits a plain ``open(..., "w")`` would give a new file (0644 under umask 022)."""
    return 0o666 & ~_current_umask()


def apply_umask_mode(path: Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the mode a plain create would give.

    ``mkstemp`` and ``mkdtemp`` create 0600 files and 0700 folders; an output renamed from such
    a temporary name would otherwise stay unreadable to a container's non-root user, a web
    server or a colleague. Files get ``0666 & ~umask``, folders ``0777 & ~umask``.
    """
    umask = _current_umask()
    path = Path(path)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~umask)
            for f in files:
                os.chmod(os.path.join(root, f), 0o666 & ~umask)
        os.chmod(path, 0o777 & ~umask)
    else:
        os.chmod(path, 0o666 & ~umask)


def check_writable(path: Path, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` if ``path`` exists and ``overwrite`` is false."""
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists (use --overwrite to replace it)")


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary file keeps the suffix of ``path`` so that writers which infer the format
    from the name (tifffile, torch, zipfile) behave as they would on the final name.
    """
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{''.join(path.suffixes)}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        apply_umask_mode(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, overwrite) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str, overwrite: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), overwrite)


def prepare_output_dir(path: Path, overwrite: bool, is_ours: Callable[[Path], bool] | None = None) -> Path:
    """Create an empty output directory, refusing to clobber an existing non-empty one.

    With ``overwrite`` an existing directory is removed first, but only if ``is_ours`` (when
    given) recognises it as something this tool created, so that a typo in ``--out`` cannot
    delete an unrelated folder.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not overwrite:
            raise OutputExistsError(f"{path} already exists (use --overwrite to replace it)")
        if is_ours is not None and not is_ours(path):
            raise OutputExistsError(f"{path} exists and was not created by ai4life-kit; refusing to delete it")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


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
