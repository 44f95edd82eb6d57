"""Create, replace or continue a run directory: the checks around training, not the training.

Before the first step, rank 0 locks the run directory (:func:`lock_if_present`), a resume is
checked against what the run recorded (:func:`check_resume`: the same files, the same recipe but
for :data:`RESUME_MAY_CHANGE`), and the directory is created, replaced with ``--overwrite`` (only
what training wrote, :func:`clear_run_dir`) or updated (:func:`prepare_run_dir`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ai4life_kit import __version__
from ai4life_kit.config import TrainingSpec, load_spec, save_spec
from ai4life_kit.data.loading import TrainingSet
from ai4life_kit.data.normalization import read_normalization
from ai4life_kit.errors import ModelLoadError, OutputExistsError, UserInputError
from ai4life_kit.fileio import DirLock, atomic_write_text
from ai4life_kit.rundir import RUN_ENTRIES, RUN_LOCK, RUN_MARKER, is_run_dir, load_checkpoint, read_marker, read_summary

__all__ = [
    "RESUME_MAY_CHANGE",
    "check_resume",
    "file_entries",
    "lock_if_present",
    "occupied",
    "prepare_run_dir",
]


RESUME_MAY_CHANGE = (
    "training.epochs",
    "training.early_stopping_patience",
    "training.compile",
    "data.loading",
    "data.cache_mb",
    "name",
    "description",
)
"""Spec fields a resume may change: how long to train and how to read the data, never what is learnt
(the data files, model, patches, batches, validation, seed, optimiser and precision stay the run's)."""


def occupied(out: Path) -> bool:
    """Whether ``out`` holds anything: a lock file left by a killed run does not count."""
    return out.exists() and (not out.is_dir() or any(p.name != RUN_LOCK for p in out.iterdir()))


def _marker(ts: TrainingSet) -> dict:
    """:data:`RUN_MARKER`'s content: who made the run, and the files it trains on (what a resume must give)."""
    return {
        "created_by": "ai4life-kit",
        "version": __version__,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "files": [str(p) for p in ts.paths],
        "target_files": [str(p) for p in ts.target_paths] if ts.target_paths is not None else None,
        "inputs": file_entries(ts.paths, ts.axes, ts.shapes, ts.dtypes),
        "targets": file_entries(ts.target_paths, ts.target_axes, ts.shapes, ts.target_dtypes)
        if ts.target_paths is not None
        else None,
    }


def clear_run_dir(out: Path, inputs: Sequence[Path]) -> tuple[list[str], list[str]]:
    """Delete what training wrote into ``out`` (:data:`RUN_ENTRIES`, stale temporary files); keep the rest.

    Returns the names deleted (folders with a trailing ``/``) and the names kept. Refuses, before
    deleting anything, when one of ``inputs`` (resolved paths) lies in what would be deleted.
    """
    root = out.resolve()
    doomed = [out / name for name in RUN_ENTRIES if (out / name).exists() or (out / name).is_symlink()]
    doomed += sorted(p for p in out.glob(".*.tmp*") if p not in doomed)  # atomic writes a kill cut short
    for entry in doomed:
        where = root / entry.name
        for path in inputs:
            if path == where or where in path.parents:
                raise UserInputError(
                    f"--overwrite would delete {entry}, which holds the input {path}: "
                    f"move the data out of {entry} or train into another --out"
                )
    deleted = []
    for entry in doomed:
        if entry.is_dir() and not entry.is_symlink():  # a link is removed, never what it points to
            shutil.rmtree(entry)
            deleted.append(f"{entry.name}/")
        else:
            entry.unlink()
            deleted.append(entry.name)
    kept = sorted(p.name for p in out.iterdir() if p.name != RUN_LOCK)
    return deleted, kept


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _spec_differences(run: TrainingSpec, spec: TrainingSpec) -> list[str]:
    """``key new (run: old)`` for every field a resume may not change but ``spec`` does."""
    old, new = _flatten(run.model_dump(mode="json")), _flatten(spec.model_dump(mode="json"))
    missing = object()
    diffs = []
    for key in dict.fromkeys([*old, *new]):  # both specs' fields, in the spec's order
        a, b = old.get(key, missing), new.get(key, missing)
        if key not in RESUME_MAY_CHANGE and a != b:
            diffs.append(f"{key} {'unset' if b is missing else repr(b)} (run: {'unset' if a is missing else repr(a)})")
    return diffs


def _names(paths: Sequence[str], full: set[str] | frozenset[str] = frozenset()) -> str:
    """Up to three file names (the whole path for a name in ``full``), then how many more."""
    names = [p if Path(p).name in full else Path(p).name for p in paths]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _file_differences(option: str, run: Sequence[str] | None, run_entries: list | None, given: list[dict]) -> list[str]:
    """How the files ``option`` resolved to (``given``: :func:`file_entries`) differ from the run's."""
    run = list(run or [])
    paths = [e["path"] for e in given]
    if run == paths:
        # The same names; a cheap check that they hold the same images (shape, dtype) as when the run read them.
        before = {e.get("path"): e for e in run_entries or [] if isinstance(e, dict)}
        changed = [
            e["path"]
            for e in given
            if e["path"] in before
            and (before[e["path"]].get("shape"), before[e["path"]].get("dtype")) != (e["shape"], e["dtype"])
        ]
        return [f"{option} {_names(changed)} changed since the run read them (shape or dtype)"] if changed else []
    if sorted(run) == sorted(paths):
        return [f"{option} gives the run's files in another order"]
    added = [p for p in paths if p not in run]
    lacking = [p for p in run if p not in paths]
    # A name on both sides (the same images copied elsewhere) is told apart by its whole path.
    both = {Path(p).name for p in added} & {Path(p).name for p in lacking}
    parts = [f"has {_names(added, both)}, not in the run"] if added else []
    parts += [f"lacks the run's {_names(lacking, both)}"] if lacking else []
    return [f"{option} {' and '.join(parts)}"]


def _recorded_files(out: Path) -> dict | None:
    """The files the run trained on: from its marker, else from the summary of a version that recorded them."""
    marker = read_marker(out)
    if marker is not None and "files" in marker:
        return marker
    summary = read_summary(out)
    # Before data_arguments existed, "files" held the raw arguments (a folder, a glob), not the files.
    return summary if "data_arguments" in summary else None


def check_resume(
    out: Path, spec: TrainingSpec, ts: TrainingSet, log: Callable[[str], None] | None
) -> dict[str, list[float]]:
    """Refuse a resume that would not continue the same run; return the run's validated normalisation.

    A resume may extend training (:data:`RESUME_MAY_CHANGE`); the data files, their order and the
    rest of the recipe must be the run's, or the old weights and normalisation would meet new data
    and "best" would no longer compare like with like.
    """
    problems = []
    recorded = _recorded_files(out)
    if recorded is None:
        if log is not None:
            log(f"Warning: {out} records no training files (an older version made it): --data is not checked")
    else:
        given = file_entries(ts.paths, ts.axes, ts.shapes, ts.dtypes)
        problems += _file_differences("--data", recorded.get("files"), recorded.get("inputs"), given)
        if ts.target_paths is not None or recorded.get("target_files"):
            given = (
                file_entries(ts.target_paths, ts.target_axes, ts.shapes, ts.target_dtypes)
                if ts.target_paths is not None
                else []
            )
            problems += _file_differences("--target", recorded.get("target_files"), recorded.get("targets"), given)
    problems += _spec_differences(load_spec(out / "spec.yaml"), spec)
    if problems:
        raise UserInputError(
            f"--resume: this command is not the run in {out}: {'; '.join(problems)} "
            f"(a resume may change only {', '.join(RESUME_MAY_CHANGE)}; give {out / 'spec.yaml'} as the spec "
            "to continue the run as it was)"
        )
    done = load_checkpoint(out / "checkpoints" / "last.pt")["epoch"]
    if spec.training.epochs < done:
        raise UserInputError(
            f"--resume: training.epochs {spec.training.epochs} is below the {done} epochs the run in {out} "
            "has trained already"
        )
    norm_path = out / "normalization.json"
    if not norm_path.is_file():
        raise ModelLoadError(
            f"--resume: {norm_path} is missing: the checkpoints need the normalisation they were trained with"
        )
    norm = read_normalization(norm_path, ts.n_channels, ts.n_channels)
    return dataclasses.asdict(norm)


def lock_if_present(out: Path, lock: DirLock) -> None:
    """Lock an existing ``out`` before the data are read (rank 0).

    A run in progress there stops this one at once, not after loading its data, and the directory
    cannot change under the resume checks. A new ``out`` is locked once created (:func:`prepare_run_dir`).
    """
    if out.is_dir():
        lock.acquire()


def prepare_run_dir(
    out: Path,
    spec: TrainingSpec,
    ts: TrainingSet,
    norm: dict[str, list[float]],
    lock: DirLock,
    *,
    resume: bool,
    resuming: bool,
    overwrite: bool,
    log: Callable[[str], None] | None,
) -> None:
    """Lock, then create, replace or (resuming) update the run directory; write spec and normalisation (rank 0).

    A new ``out`` is locked here, once created (an existing one already is, :func:`lock_if_present`).
    Everything is decided again under the lock: another process may have written ``out`` since
    :func:`train` looked at it.
    """
    out.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    ckpt_dir = out / "checkpoints"
    if resume and not resuming and (ckpt_dir / "last.pt").is_file():
        raise OutputExistsError(f"another ai4life-kit process wrote {out} meanwhile: run the command again")
    if resuming:  # checked against the run by every rank (check_resume), under this very lock
        if read_marker(out) is None:  # a run of an older version: marked from now on
            atomic_write_text(out / RUN_MARKER, json.dumps(_marker(ts), indent=2))
        save_spec(spec, out / "spec.yaml")  # what the resume changed (epochs, ...), recorded
    else:
        if occupied(out):
            if not (resume or overwrite):
                raise OutputExistsError(f"{out} already exists (use --overwrite to replace it)")
            if not is_run_dir(out):
                raise OutputExistsError(f"{out} exists and was not created by ai4life-kit; refusing to delete it")
            if overwrite:
                deleted, kept = clear_run_dir(out, [*ts.paths, *(ts.target_paths or [])])
                if log is not None:
                    also = f" (kept: {', '.join(kept)})" if kept else ""
                    log(f"--overwrite: deleted the old run's {', '.join(deleted)} from {out}{also}")
        # The marker goes first: a run killed at any later moment can still be replaced with --overwrite.
        atomic_write_text(out / RUN_MARKER, json.dumps(_marker(ts), indent=2))
        atomic_write_text(out / "normalization.json", json.dumps(norm, indent=2))
        save_spec(spec, out / "spec.yaml")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale_tmp in [*out.glob(".*.tmp*"), *ckpt_dir.glob(".*.tmp*")]:
        stale_tmp.unlink()  # left by a killed run: atomic writes never reached their rename


def file_entries(
    paths: Sequence[Path], axes: Sequence[str] | None, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str] | None
) -> list[dict]:
    """``training_summary.json``'s record of image files: name, absolute path, native axes, shape, dtype."""
    return [
        {"name": p.name, "path": str(p), "axes": a, "shape": list(s), "dtype": d}
        for p, a, s, d in zip(paths, axes or [], shapes, dtypes or [], strict=True)
    ]
