"""The training loop: read top to bottom.

lock the run directory -> load data -> normalise -> (replace, or check a resume against, the old run)
-> sampler on the device -> model/optimiser -> (resume) ->
epochs of [sample, augment, mask, forward, loss, step] -> validate -> checkpoint, log, plot.

Under ``torchrun`` every process runs this same loop on its share of the batch (DDP averages the
gradients); rank 0 alone validates, writes the run directory and shows progress
(see :mod:`ai4life_kit.training.distributed`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ai4life_kit.config import TrainingSpec
from ai4life_kit.data.loading import TrainingSet, load_training_set, make_sampler, split_validation, training_stats
from ai4life_kit.errors import DataError, OutputExistsError
from ai4life_kit.fileio import DirLock, check_location
from ai4life_kit.rundir import (
    PAIRS_PLOT,
    RUN_ENTRIES,
    RUN_LOCK,
    RUN_MARKER,
    TrainingSummary,
    checkpoint_path,
    is_run_dir,
    write_summary,
)
from ai4life_kit.runtime import resolve_device
from ai4life_kit.training.distributed import DistContext, launch_world_size, local_batch_size
from ai4life_kit.training.progress import EpochProgress
from ai4life_kit.training.report import plot_losses
from ai4life_kit.training.restoration_pairs import make_restoration_pairs, write_pairs_plot
from ai4life_kit.training.run_setup import (
    RESUME_MAY_CHANGE,
    check_resume,
    file_entries,
    lock_if_present,
    occupied,
    prepare_run_dir,
)
from ai4life_kit.training.session import Prepared, Session, finish_epoch, start_session, train_epoch

__all__ = ["RESUME_MAY_CHANGE", "RUN_ENTRIES", "RUN_LOCK", "RUN_MARKER", "train", "is_run_dir"]


def _write_report(out: Path, rows: list[dict], title: str, summary: TrainingSummary) -> None:
    """Loss plot and training summary at the end of the session (rank 0)."""
    if rows:
        plot_losses(rows, out / "loss.png", title)
    write_summary(summary, out)


def _calibrate(out: Path, prepared: Prepared, log: Callable[[str], None] | None) -> None:
    """Probabilistic runs: interval factors on the validation split (rank 0; :mod:`training.calibration`)."""
    from ai4life_kit.training.calibration import calibrate_run, summary_line

    cal = calibrate_run(out, prepared.val_set, prepared.norm, prepared.device)
    if log is not None:
        log(f"uncertainty on the validation split ({cal['pixels']:,} pixels), central intervals: {summary_line(cal)}")


def train(
    spec: TrainingSpec,
    data: Sequence[str | Path],
    target: Sequence[str | Path] | None,
    out: Path,
    *,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Train a denoiser as ``spec`` says and write a run directory to ``out``.

    With ``resume`` an interrupted run continues from ``out/checkpoints/last.pt`` (at most the
    epoch in progress is lost) with its saved normalisation. ``spec`` and the data must be the
    run's, except for the fields in :data:`RESUME_MAY_CHANGE` (``training.epochs`` no lower than
    the epochs trained); the changes are written to ``out/spec.yaml``. With ``overwrite`` an
    existing run directory is replaced: only what training writes (:data:`RUN_ENTRIES`) is
    deleted, anything else in ``out`` is kept, and an input inside what would be deleted stops the
    run. One process at a time trains into ``out`` (a lock, :data:`RUN_LOCK`); a second one fails
    at once naming the first. ``log`` receives one-line notes (what ``overwrite`` deleted).
    Returns ``out``.

    Launched by ``torchrun`` with several processes, each process trains on
    ``training.batch_size / processes`` patches per step of its own random stream (DDP) and only
    rank 0 validates and writes; the run directory is the same as a single process would write.
    """
    out = Path(out)
    check_location(out, folder=True)  # a file named like the run, a read-only disk: before loading any data
    if occupied(out):
        if not resume and not overwrite:
            raise OutputExistsError(f"{out} already exists (use --overwrite to replace it, or --resume to continue it)")
        if not is_run_dir(out):
            if resume:
                raise OutputExistsError(f"--resume: {out} is not an ai4life-kit run directory")
            raise OutputExistsError(f"{out} exists and was not created by ai4life-kit; refusing to delete it")
    if spec.is_self_supervised and target:
        raise DataError(f"{spec.algorithm.name} is self-supervised: it trains on noisy images only; drop --target")
    if spec.task.makes_pairs and target:
        raise DataError(
            f"task {spec.task.kind!r} makes its inputs from the clean --data (semi-synthetic pairs); drop --target"
        )
    if not spec.is_self_supervised and not target and not spec.task.makes_pairs:
        hint = " or --semi-synthetic to make the inputs from --data" if spec.task.kind != "denoise" else ""
        raise DataError(
            f"{spec.algorithm.name} needs --target images (clean for CARE, a second noisy set for n2n){hint}"
        )
    # Checked before the processes connect: a wrong recipe fails at once, the same way on every rank.
    local_batch = local_batch_size(spec.training.batch_size, launch_world_size())
    lock = DirLock(out / RUN_LOCK)
    try:
        with DistContext.from_env(resolve_device(device)) as dist:
            return _train(
                spec,
                data,
                target,
                out,
                dist,
                lock,
                local_batch=local_batch,
                resume=resume,
                overwrite=overwrite,
                progress=progress,
                log=log if dist.is_main else None,
            )
    finally:
        lock.release()  # taken by rank 0 alone: a no-op in the other processes


def _train(
    spec: TrainingSpec,
    data: Sequence[str | Path],
    target: Sequence[str | Path] | None,
    out: Path,
    dist: DistContext,
    lock: DirLock,
    *,
    local_batch: int,
    resume: bool,
    overwrite: bool,
    progress: bool,
    log: Callable[[str], None] | None,
) -> Path:
    """:func:`train` once the arguments are checked, in every process of the run."""
    last_path = checkpoint_path(out, "last")
    # Rank 0 looks and decides for every rank: a directory appearing meanwhile must not make one rank
    # skip a collective (or a resume) that another makes.
    dist.run_on_main(lock_if_present, out, lock)
    resuming = bool(dist.broadcast_object(resume and last_path.is_file() if dist.is_main else None))
    prepared = _prepare_data(spec, data, target, out, dist, resuming, log)
    try:
        # Rank 0 creates or replaces the run directory only once every rank has passed the checks above
        # (no rank may find the fresh directory and call it "already exists"); the others go on once it exists.
        dist.barrier()
        dist.run_on_main(
            prepare_run_dir,
            out,
            prepared.spec,
            prepared.ts,
            prepared.norm,
            lock,
            resume=resume,
            resuming=resuming,
            overwrite=overwrite,
            log=log,
        )
        if prepared.spec.task.kind != "denoise" and prepared.ts.targets is not None:
            dist.run_on_main(write_pairs_plot, out / PAIRS_PLOT, prepared.ts, prepared.spec.task)
        session = start_session(prepared, dist, last_path if resuming else None)
        t_start = time.perf_counter()
        cfg = prepared.spec.training
        bar = EpochProgress(enabled=progress and dist.is_main, steps=cfg.steps_per_epoch, batch_size=cfg.batch_size)
        finished_early = session.stale >= (cfg.early_stopping_patience or math.inf)
        with bar:
            for epoch in range(session.start_epoch + 1, cfg.epochs + 1):
                if finished_early:
                    break
                bar.start_epoch(epoch, cfg.epochs)
                train_loss, seconds = train_epoch(session, prepared, local_batch, bar)
                row, improved = finish_epoch(session, prepared, out, epoch, train_loss, seconds)
                bar.end_epoch(train_loss, row["val_loss"], row["val_psnr"], improved)
                if cfg.early_stopping_patience is not None and session.stale >= cfg.early_stopping_patience:
                    finished_early = True
        summary = _summary(prepared, session, data, target, finished_early, time.perf_counter() - t_start)
        spec = prepared.spec
        title = f"{spec.name or spec.algorithm.name} ({spec.algorithm.name})"
        dist.run_on_main(_write_report, out, session.rows, title, summary)
        if spec.is_probabilistic and prepared.val_set is not None and session.rows:
            dist.run_on_main(_calibrate, out, prepared, log)
        return out
    finally:
        prepared.ts.close()  # the files behind lazy views (see load_training_set)


def _prepare_data(
    spec: TrainingSpec,
    data: Sequence[str | Path],
    target: Sequence[str | Path] | None,
    out: Path,
    dist: DistContext,
    resuming: bool,
    log: Callable[[str], None] | None,
) -> Prepared:
    """Load and check the data, take the run's normalisation (resume) or compute it, build the samplers.

    Everything that can reject the data happens here, before the run directory is touched.
    """
    task = spec.task
    restoring = task.kind != "denoise"
    if restoring and spec.data.loading == "lazy":
        raise DataError(f"task {task.kind!r} makes its training pairs in memory; use data.loading: memory (or auto)")
    ts = load_training_set(
        data,
        target,
        spec.data.dims,
        spec.data.axes,
        "memory" if restoring else spec.data.loading,
        spec.data.cache_mb,
        target_scale=task.output_scale,
    )
    try:
        if restoring:
            ts = make_restoration_pairs(ts, task, spec.training.seed, spec.data.patch_size)
            if log is not None and task.makes_pairs:
                log(f"{task.kind.replace('_', '-')}: {sum(x.shape[0] for x in ts.images)} semi-synthetic pair(s) made")
        dev = dist.device
        if spec.data.n_channels is not None and spec.data.n_channels != ts.n_channels:
            raise DataError(f"the spec says data.n_channels={spec.data.n_channels} but the images have {ts.n_channels}")
        spec = spec.model_copy(deep=True)
        spec.data.n_channels = ts.n_channels
        if resuming:
            # Every rank reads the same run directory (locked) and comes to the same verdict.
            norm = check_resume(out, spec, ts, log)
        patch = spec.data.patch_size
        train_set, val_set = split_validation(ts, spec.data.val_fraction, patch)
        if not resuming:
            mean, std = training_stats(train_set.images, train_set.names)
            t_mean, t_std = (mean, std)
            if train_set.targets is not None:
                t_mean, t_std = training_stats(train_set.targets, [f"target {n}" for n in train_set.names])
            norm = {"mean": mean, "std": std, "target_mean": t_mean, "target_std": t_std}
        train_sampler = make_sampler(train_set, norm, patch, dev)
        val_sampler = make_sampler(val_set, norm, patch, dev) if val_set is not None else train_sampler
        return Prepared(spec, ts, val_set, norm, train_sampler, val_sampler, dev, dist.world_size)
    except BaseException:
        ts.close()  # explicitly: see load_training_set
        raise


def _summary(
    prepared: Prepared,
    session: Session,
    data: Sequence[str | Path],
    target: Sequence[str | Path] | None,
    finished_early: bool,
    seconds: float,
) -> TrainingSummary:
    """``training_summary.json`` of this session."""
    ts, val_set, rows = prepared.ts, prepared.val_set, session.rows
    best_row = min(rows, key=lambda r: r["val_loss"]) if rows else {}
    return TrainingSummary(
        algorithm=prepared.spec.algorithm.name,
        # The files the arguments resolved to (absolute), not the arguments: a folder or a glob
        # names no image, and packaging reads its test tensors from these very files.
        files=[str(p) for p in ts.paths],
        target_files=[str(p) for p in ts.target_paths] if ts.target_paths is not None else None,
        data_arguments=[str(p) for p in data],
        target_arguments=[str(p) for p in target] if target else None,
        inputs=file_entries(ts.paths, ts.axes, ts.shapes, ts.dtypes),
        # Targets have their inputs' shapes, scaled in Y and X for super-resolution (load_training_set checks it).
        targets=file_entries(ts.target_paths, ts.target_axes, _target_shapes(ts, prepared.spec), ts.target_dtypes)
        if ts.target_paths is not None
        else None,
        validation="held-out files"
        if val_set is not None and len(ts.images) > 1
        else ("held-out region" if val_set is not None else "training patches (val_fraction 0)"),
        n_channels=ts.n_channels,
        data_loading="lazy" if ts.lazy else "memory",
        processes=prepared.world_size,
        epochs_run=int(rows[-1]["epoch"]) if rows else 0,
        early_stopped=finished_early,
        steps=session.step,
        best_epoch=best_row.get("epoch"),
        val_loss=best_row.get("val_loss"),
        val_psnr=best_row.get("val_psnr"),
        device=str(prepared.device),
        seconds_this_session=seconds,
    )


def _target_shapes(ts: TrainingSet, spec: TrainingSpec) -> list[tuple[int, ...]]:
    """The target files' shapes: the inputs', ``factor`` times larger in Y and X for super-resolution pairs."""
    f = spec.task.output_scale
    return [
        tuple(n * f if a in "YX" else n for a, n in zip(axes, shape, strict=True))
        for axes, shape in zip(ts.axes, ts.shapes, strict=True)
    ]
