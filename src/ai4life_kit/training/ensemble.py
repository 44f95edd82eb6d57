"""``train --ensemble K``: K members of one recipe, trained one after another with seeds seed, seed+1, ...

Each member is an ordinary run directory (``ENSEMBLE/member-<i>``, :func:`ai4life_kit.training.train`
writes it), so every member resumes, predicts and packages on its own; the ensemble's marker
(:data:`~ai4life_kit.rundir.ENSEMBLE_MARKER`), written first, says which folders belong to it.
Prediction averages the members and reports their spread (:mod:`ai4life_kit.prediction.ensemble`).
Members differ only in their seed: the weight initialisation, the patches and the masks.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from ai4life_kit import __version__
from ai4life_kit.config import TrainingSpec
from ai4life_kit.errors import OutputExistsError, UserInputError
from ai4life_kit.fileio import atomic_write_text, check_location
from ai4life_kit.rundir import (
    ENSEMBLE_MARKER,
    FORMAT_VERSION,
    is_run_dir,
    member_dir,
    read_ensemble,
    read_summary,
)
from ai4life_kit.training.distributed import launch_world_size
from ai4life_kit.training.loop import train
from ai4life_kit.training.run_setup import clear_run_dir, occupied

__all__ = ["MIN_MEMBERS", "train_ensemble"]

MIN_MEMBERS = 2
"""A spread needs at least two members."""


def _member_spec(spec: TrainingSpec, index: int) -> TrainingSpec:
    member = spec.model_copy(deep=True)
    member.training.seed = spec.training.seed + index - 1
    return member


def _finished(run: Path, spec: TrainingSpec) -> bool:
    """Whether member ``run`` completed its epochs (or stopped early) in an earlier session."""
    summary = read_summary(run)  # {} without one
    return bool(summary.get("early_stopped")) or int(summary.get("epochs_run") or 0) >= spec.training.epochs


def _clear(out: Path, inputs: Sequence[Path], log: Callable[[str], None] | None) -> None:
    """``--overwrite``: delete the old ensemble's members and marker (or an old single run's files), nothing else."""
    old = read_ensemble(out)
    if old is None:
        if not is_run_dir(out):
            raise OutputExistsError(f"{out} exists and was not created by ai4life-kit; refusing to delete it")
        deleted, _ = clear_run_dir(out, inputs)
    else:
        deleted = []
        for name in old["members"]:
            run = out / name
            if is_run_dir(run):
                clear_run_dir(run, inputs)
                if not any(run.iterdir()):
                    run.rmdir()
                deleted.append(f"{name}/")
        (out / ENSEMBLE_MARKER).unlink()
        deleted.append(ENSEMBLE_MARKER)
    if log is not None:
        log(f"--overwrite: deleted the old {', '.join(deleted)} from {out}")


def train_ensemble(
    spec: TrainingSpec,
    data: Sequence[str | Path],
    target: Sequence[str | Path] | None,
    out: Path,
    members: int,
    *,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train ``members`` copies of ``spec`` (seeds ``seed .. seed + members - 1``) into ``out/member-<i>``.

    With ``resume`` members that finished are kept, the interrupted one continues from its last
    checkpoint and the rest start; the recipe, data and member count must be the run's. With
    ``overwrite`` only the old ensemble's members (or an old run's files) are deleted. Returns ``out``.

    Raises
    ------
    UserInputError
        Fewer than :data:`MIN_MEMBERS` members, ``torchrun``, a resume of something else, an
        occupied ``out`` without ``overwrite``.
    """
    out = Path(out)
    if members < MIN_MEMBERS:
        raise UserInputError(f"--ensemble {members}: an ensemble needs at least {MIN_MEMBERS} members")
    if launch_world_size() > 1:
        raise UserInputError("--ensemble trains its members one after another; run it without torchrun")
    if spec.task.resamples:
        raise UserInputError(f"--ensemble is not offered for {spec.task.kind.replace('_', '-')} recipes yet")
    check_location(out, folder=True)
    names = [member_dir(out, i).name for i in range(1, members + 1)]
    seeds = [spec.training.seed + i for i in range(members)]
    if resume:
        old = read_ensemble(out)
        if old is None:
            raise OutputExistsError(f"--resume: {out} is not an ai4life-kit ensemble (no {ENSEMBLE_MARKER})")
        if old["members"] != names or old.get("seeds") != seeds:
            raise UserInputError(
                f"--resume: the ensemble in {out} has {len(old['members'])} members with seeds {old.get('seeds')}; "
                f"this command asks for {members} with seeds {seeds}"
            )
    else:
        if occupied(out):
            if not overwrite:
                raise OutputExistsError(
                    f"{out} already exists (use --overwrite to replace it, or --resume to continue it)"
                )
            _clear(out, [Path(p).resolve() for p in [*data, *(target or [])]], log)
        out.mkdir(parents=True, exist_ok=True)
        marker = {
            "created_by": "ai4life-kit",
            "format_version": FORMAT_VERSION,
            "version": __version__,
            "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "members": names,
            "seeds": seeds,
        }
        atomic_write_text(out / ENSEMBLE_MARKER, json.dumps(marker, indent=2))
    for index, name in enumerate(names, start=1):
        run, member = out / name, _member_spec(spec, index)
        started = (run / "checkpoints" / "last.pt").is_file()
        if resume and started and _finished(run, member):
            if log is not None:
                log(f"{name} (seed {member.training.seed}) finished earlier; kept")
            continue
        if log is not None:
            log(f"training {name} of {members} (seed {member.training.seed})")
        train(
            member,
            data,
            target,
            run,
            device=device,
            resume=resume and started,
            overwrite=resume and not started and run.exists(),  # killed before its first epoch: start over
            progress=progress,
            log=log,
        )
    return out
