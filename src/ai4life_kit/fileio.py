"""Atomic file output: write to a temporary name in the target folder, then rename.

A crash, a ``kill -9`` or a full disk therefore never leaves a half-written file under the
final name, and an existing file is only replaced when the caller allows it. Temporary names
carry the writer's pid, so that later runs can remove what a killed one left; storage failures
(full disk, read-only, a file where a folder should be) become one-line errors. The locks that
keep two processes out of one output folder are in :mod:`ai4life_kit.locks`.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ai4life_kit.errors import Ai4LifeKitError, OutputExistsError, StorageError, UserInputError
from ai4life_kit.locks import DirLock, waiting_lock  # re-exported: callers import them from here

__all__ = [
    "DirLock",
    "waiting_lock",
    "apply_umask_mode",
    "umask_file_mode",
    "atomic_folder",
    "atomic_path",
    "atomic_paths",
    "check_location",
    "mount_point",
    "remove_stale_temporaries",
    "scratch_dir",
    "temp_prefix",
    "write_failure",
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


def check_writable(path: Path, overwrite: bool, folder: bool = False) -> None:
    """Check, before any work, that ``path`` can be written: exists only with ``overwrite``, fits its location.

    Raises :class:`OutputExistsError` if ``path`` exists and ``overwrite`` is false, and
    :class:`UserInputError` when it can never be written (see :func:`check_location`).
    """
    path = Path(path)
    check_location(path, folder)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists (use --overwrite to replace it)")


def check_location(path: Path, folder: bool = False) -> None:
    """Raise a one-line :class:`UserInputError` if ``path`` (a file, or a folder with ``folder``) cannot be written.

    Catches, before hours of work rather than after: a regular file where a folder of the path
    should be, a folder where the output file should be (or the reverse with ``folder``), and a
    nearest existing folder on a read-only file system or without write permission.
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise UserInputError(f"{path} is a file, not a folder: choose another output folder")
        if not folder and path.is_dir():
            raise UserInputError(f"{path} is a folder: give the name of the file to write")
    parent = path if folder and path.is_dir() else path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.is_dir():
            break
        if ancestor.exists() or ancestor.is_symlink():
            raise UserInputError(f"{ancestor} is a file, not a folder, so {path} cannot be created")
    else:  # pragma: no cover - the root always exists
        return
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserInputError(f"{ancestor} is {_unwritable_reason(ancestor)}, so {path} cannot be written")


def _unwritable_reason(folder: Path) -> str:
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "on a read-only file system"
    except OSError:
        pass
    return "not writable (permission denied)"


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing ancestor)."""
    p = Path(os.path.abspath(path))
    while not p.exists():
        p = p.parent
    while not os.path.ismount(p):
        p = p.parent
    return p


# torch.save and tifffile report a short write without an errno; the free space then tells.
_SHORT_WRITE_MARKERS = ("file write failed", "requested and", "unexpected pos")
_LOW_SPACE_BYTES = 64 * 2**20


def write_failure(exc: BaseException, path: Path) -> Ai4LifeKitError | None:
    """A one-line error for an exception raised while writing ``path``, or None if it is not a storage problem.

    ``ENOSPC`` and ``EDQUOT`` read "no space left on device MOUNT while writing PATH"; a read-only
    file system, a missing permission and a file where a folder should be say so. torch's
    ``PytorchStreamWriter failed writing file`` and tifffile's ``N requested and M written`` carry
    no errno: they count as a full disk when the file system has less than 64 MiB free.
    """
    path = Path(path)
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and code in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"no space left on device {mount_point(path)} while writing {path}")
    if isinstance(exc, OSError) and code == errno.EROFS:
        return UserInputError(f"{path} is on a read-only file system ({mount_point(path)})")
    if isinstance(exc, PermissionError):
        return UserInputError(f"permission denied writing {path}")
    if isinstance(exc, NotADirectoryError | FileExistsError):
        return UserInputError(f"cannot write {path}: {exc.filename or path} is a file, not a folder")
    if isinstance(exc, OSError | RuntimeError) and any(m in str(exc) for m in _SHORT_WRITE_MARKERS):
        try:
            free = shutil.disk_usage(mount_point(path)).free
        except OSError:
            return None
        if free < _LOW_SPACE_BYTES:
            return StorageError(f"no space left on device {mount_point(path)} while writing {path}")
    return None


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The temporary file keeps the suffix of ``path`` so that writers which infer the format
    from the name (tifffile, torch, zipfile) behave as they would on the final name.
    """
    with atomic_paths([path], overwrite) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(paths: Sequence[Path], overwrite: bool = True) -> Iterator[tuple[Path, ...]]:
    """Like :func:`atomic_path` for several files written as one set, renamed in the given order.

    Every file is written in full under its temporary name before the first rename, so a full
    disk or a crash while writing leaves the old set untouched; put the file that commits the set
    (a training run's ``last.pt``) last. Storage failures become one-line errors
    (:func:`write_failure`); temporary names carry the writer's pid (:func:`remove_stale_temporaries`).
    """
    paths = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        for path in paths:
            check_writable(path, overwrite)
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(path)
            suffix = f".tmp{''.join(path.suffixes)}"
            fd, name = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix, dir=path.parent)
            os.close(fd)
            temps.append(Path(name))
        yield tuple(temps)
        for tmp in temps:
            apply_umask_mode(tmp)
        for tmp, path in zip(temps, paths, strict=True):
            os.replace(tmp, path)
    except Exception as exc:
        failure = write_failure(exc, paths[len(temps)] if len(temps) < len(paths) else _culprit(temps, paths))
        if failure is not None:
            raise failure from None
        raise
    finally:
        for tmp in temps:
            if tmp.exists():
                tmp.unlink()


def _culprit(temps: list[Path], paths: list[Path]) -> Path:
    """The output whose temporary file was being written when the set failed: the last non-empty one."""
    for tmp, path in reversed(list(zip(temps, paths, strict=True))):
        with contextlib.suppress(OSError):
            if tmp.exists() and tmp.stat().st_size > 0:
                return path
    return paths[0]


def temp_prefix(path: Path) -> str:
    """``.NAME.PID.`` the start of this process's temporary names for ``path``."""
    return f".{Path(path).name}.{os.getpid()}."


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete temporaries of ``path`` (files or folders ``.NAME.PID.*.tmp*``) whose writer process is gone.

    A ``kill -9`` or a power cut leaves the temporary file of an atomic write behind; the next
    run writing the same output removes it. A temporary of a live process (another run writing
    the same name right now) and names without a pid are left alone. Only this host's pids can
    be checked, so on a shared network folder a temporary of another host's live run could be
    removed; its rename then fails loudly rather than writing garbage.
    """
    path = Path(path)
    removed = []
    prefix = f".{path.name}."
    try:
        candidates = list(path.parent.glob(f"{glob.escape(prefix)}*.tmp*"))
    except OSError:
        return removed
    for tmp in candidates:
        pid_text = tmp.name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed.append(tmp)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def atomic_folder(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a new empty folder next to ``path``; move it onto ``path`` on success, delete it on failure.

    An existing ``path`` (with ``overwrite``) is first renamed aside and deleted only after the
    new folder is in place, so there is never a moment without a complete output.
    """
    path = Path(path)
    check_writable(path, overwrite, folder=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=f".tmp{path.suffix}", dir=path.parent))
    try:
        try:
            yield tmp
        except Exception as exc:
            failure = write_failure(exc, path)
            if failure is None:
                raise
            raise failure from None
        apply_umask_mode(tmp)  # mkdtemp made it 0700
        old = None
        if path.exists() or path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(path), suffix=".tmp.old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
def scratch_dir(kind: str) -> Iterator[str]:
    """A private folder ``ai4life-kit-KIND-PID-*`` in the system's temporary folder, deleted on exit.

    Folders of the same kind left by killed processes (``kill -9`` skips every cleanup) are
    deleted first, so that package builds cannot fill ``/tmp`` over weeks of use.
    """
    root = Path(tempfile.gettempdir())
    prefix = f"ai4life-kit-{kind}-"
    with contextlib.suppress(OSError):
        for old in root.glob(f"{glob.escape(prefix)}*"):
            pid_text = old.name[len(prefix) :].split("-", 1)[0]
            if pid_text.isdigit() and not _pid_alive(int(pid_text)) and old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as tmp:
        yield tmp
