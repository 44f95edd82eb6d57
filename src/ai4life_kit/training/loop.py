"""The training loop: read top to bottom.

lock the run directory -> load data -> normalise -> (replace, or check a resume against, the old run)
-> sampler on the device -> model/optimiser -> (resume) ->
epochs of [sample, augment, mask, forward, loss, step] -> validate -> checkpoint, log, plot.

Under ``torchrun`` every process runs this same loop on its share of the batch (DDP averages the
gradients); rank 0 alone validates, writes the run directory and shows progress
(see :mod:`ai4life_kit.training.distributed`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai4life_kit import __version__
from ai4life_kit.config import TrainingSpec, load_spec, save_spec
from ai4life_kit.config.spec import StructN2VAlgorithm
from ai4life_kit.data.augment import augment_batch
from ai4life_kit.data.loading import TrainingSet, load_training_set, make_sampler, split_validation, training_stats
from ai4life_kit.data.masking import MaskSpec, mask_batch
from ai4life_kit.data.normalization import read_normalization
from ai4life_kit.data.patches import PatchPositions
from ai4life_kit.errors import DataError, ModelLoadError, OutputExistsError, UserInputError
from ai4life_kit.fileio import DirLock, atomic_paths, atomic_write_text, check_location
from ai4life_kit.models import build_model, model_args
from ai4life_kit.rundir import (
    RUN_ENTRIES,
    RUN_LOCK,
    RUN_MARKER,
    ModelCheckpoint,
    TrainingState,
    TrainingSummary,
    is_run_dir,
    load_checkpoint,
    read_marker,
    read_summary,
    write_summary,
)
from ai4life_kit.runtime import autocast, channels_last, resolve_device
from ai4life_kit.training.distributed import DistContext, launch_world_size, local_batch_size
from ai4life_kit.training.progress import EpochProgress
from ai4life_kit.training.report import plot_losses, read_metrics, write_metrics

__all__ = ["RESUME_MAY_CHANGE", "RUN_ENTRIES", "RUN_LOCK", "RUN_MARKER", "train", "is_run_dir"]

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


def _occupied(out: Path) -> bool:
    """Whether ``out`` holds anything: a lock file left by a killed run does not count."""
    return out.exists() and (not out.is_dir() or any(p.name != RUN_LOCK for p in out.iterdir()))


def _mask_spec(spec: TrainingSpec) -> MaskSpec | None:
    alg = spec.algorithm
    if not spec.is_self_supervised:
        return None
    struct_axis, span = None, 0
    if isinstance(alg, StructN2VAlgorithm):
        struct_axis = {"x": -1, "y": -2, "z": -3}[alg.struct_mask.axis]
        span = alg.struct_mask.span
    return MaskSpec(alg.masked_pixel_percentage, alg.roi_size, alg.resolved_replacement, struct_axis, span)


def _loss(pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor | None, kind: str):
    pred = pred.float()
    if mask is not None:  # blind-spot loss: only the masked pixels, against their true noisy values
        return ((pred - x) ** 2)[mask].mean()
    diff = pred - y
    return diff.abs().mean() if kind == "mae" else (diff**2).mean()


def _fixed_validation(sampler: PatchPositions, n: int, batch: int, mspec: MaskSpec | None, seed: int):
    """The same validation batches for every epoch (and after a resume): drawn from a fixed seed."""
    gen = torch.Generator(device=sampler.device).manual_seed(seed + 7919)
    batches = []
    for start in range(0, n, batch):
        x, y = sampler.sample(min(batch, n - start), gen)
        if mspec is not None:
            xm, mask = mask_batch(x, mspec, gen)
            batches.append((xm, x, None, mask))
        else:
            batches.append((x, x, y, None))
    return batches


def _validate(model, batches, device, precision: str, loss_kind: str) -> tuple[float, float | None]:
    model.eval()
    losses, weights = [], []
    preds, targets = [], []
    with torch.inference_mode(), autocast(device, precision):
        for inp, x, y, mask in batches:
            pred = model(inp)
            losses.append(_loss(pred, x, y, mask, loss_kind).item())
            weights.append(inp.shape[0])
            if y is not None:
                preds.append(pred.float())
                targets.append(y)
    model.train()
    val_loss = float(np.average(losses, weights=weights))
    psnr = None
    if targets:
        p = torch.cat(preds)
        t = torch.cat(targets)
        mse = torch.mean((p - t) ** 2).item()
        rng = (t.max() - t.min()).item()
        psnr = 10 * math.log10(rng**2 / mse) if mse > 0 else float("inf")
    return val_loss, psnr


def _scheduler(opt, spec: TrainingSpec):
    kind = spec.training.lr_schedule
    if kind == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=spec.training.epochs)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _rank_seed(seed: int, rank: int, epoch: int) -> int:
    """A fresh, reproducible seed for ``rank``'s patch stream when resuming after ``epoch``."""
    entropy = [(seed + rank) % 2**64, epoch]  # SeedSequence takes non-negative integers only
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


def _restore_rng(gen: torch.Generator, state: dict, dist: DistContext, seed: int) -> None:
    """Continue this rank's patch stream where the checkpoint left it.

    Checkpoints from before multi-process training hold only ``rng_state`` (one process). With
    another number of processes than the checkpoint's there is no stream to continue for every
    rank, so each rank starts a new deterministic one from ``(seed + rank, epoch)``.
    """
    states = state.get("rng_states", [state["rng_state"]])
    if state.get("world_size", 1) == dist.world_size and len(states) == dist.world_size:
        gen.set_state(states[dist.rank])
    else:
        gen.manual_seed(_rank_seed(seed, dist.rank, state["epoch"]))


def _marker(ts: TrainingSet) -> dict:
    """:data:`RUN_MARKER`'s content: who made the run, and the files it trains on (what a resume must give)."""
    return {
        "created_by": "ai4life-kit",
        "version": __version__,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "files": [str(p) for p in ts.paths],
        "target_files": [str(p) for p in ts.target_paths] if ts.target_paths is not None else None,
        "inputs": _file_entries(ts.paths, ts.axes, ts.shapes, ts.dtypes),
        "targets": _file_entries(ts.target_paths, ts.target_axes, ts.shapes, ts.target_dtypes)
        if ts.target_paths is not None
        else None,
    }


def _clear_run_dir(out: Path, inputs: Sequence[Path]) -> tuple[list[str], list[str]]:
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
    """How the files ``option`` resolved to (``given``: :func:`_file_entries`) differ from the run's."""
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


def _check_resume(
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
        given = _file_entries(ts.paths, ts.axes, ts.shapes, ts.dtypes)
        problems += _file_differences("--data", recorded.get("files"), recorded.get("inputs"), given)
        if ts.target_paths is not None or recorded.get("target_files"):
            given = (
                _file_entries(ts.target_paths, ts.target_axes, ts.shapes, ts.target_dtypes)
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


def _lock_if_present(out: Path, lock: DirLock) -> None:
    """Lock an existing ``out`` before the data are read (rank 0).

    A run in progress there stops this one at once, not after loading its data, and the directory
    cannot change under the resume checks. A new ``out`` is locked once created (:func:`_prepare_run_dir`).
    """
    if out.is_dir():
        lock.acquire()


def _prepare_run_dir(
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

    A new ``out`` is locked here, once created (an existing one already is, :func:`_lock_if_present`).
    Everything is decided again under the lock: another process may have written ``out`` since
    :func:`train` looked at it.
    """
    out.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    ckpt_dir = out / "checkpoints"
    if resume and not resuming and (ckpt_dir / "last.pt").is_file():
        raise OutputExistsError(f"another ai4life-kit process wrote {out} meanwhile: run the command again")
    if resuming:  # checked against the run by every rank (_check_resume), under this very lock
        if read_marker(out) is None:  # a run of an older version: marked from now on
            atomic_write_text(out / RUN_MARKER, json.dumps(_marker(ts), indent=2))
        save_spec(spec, out / "spec.yaml")  # what the resume changed (epochs, ...), recorded
    else:
        if _occupied(out):
            if not (resume or overwrite):
                raise OutputExistsError(f"{out} already exists (use --overwrite to replace it)")
            if not is_run_dir(out):
                raise OutputExistsError(f"{out} exists and was not created by ai4life-kit; refusing to delete it")
            if overwrite:
                deleted, kept = _clear_run_dir(out, [*ts.paths, *(ts.target_paths or [])])
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


def _write_epoch(out: Path, last: TrainingState, best: ModelCheckpoint | None, rows: list[dict]) -> None:
    """Checkpoints and metrics of a finished epoch (rank 0), written as one set.

    All files are written in full under temporary names before any is renamed, so a full disk
    (or a kill) while writing leaves the previous epoch's set intact rather than a ``best.pt``
    one epoch ahead of ``last.pt``. ``last.pt`` is renamed last: it commits the epoch, and a
    resume drops the metrics rows after its epoch.
    """
    ckpt_dir = out / "checkpoints"
    targets = [out / "metrics.csv", *([ckpt_dir / "best.pt"] if best is not None else []), ckpt_dir / "last.pt"]
    with atomic_paths(targets) as temps:
        write_metrics(rows, temps[0])
        if best is not None:
            torch.save(best.to_dict(), temps[1])
        torch.save(last.to_dict(), temps[-1])


def _file_entries(
    paths: Sequence[Path], axes: Sequence[str] | None, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[str] | None
) -> list[dict]:
    """``training_summary.json``'s record of image files: name, absolute path, native axes, shape, dtype."""
    return [
        {"name": p.name, "path": str(p), "axes": a, "shape": list(s), "dtype": d}
        for p, a, s, d in zip(paths, axes or [], shapes, dtypes or [], strict=True)
    ]


def _write_report(out: Path, rows: list[dict], title: str, summary: TrainingSummary) -> None:
    """Loss plot and training summary at the end of the session (rank 0)."""
    if rows:
        plot_losses(rows, out / "loss.png", title)
    write_summary(summary, out)


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
    if _occupied(out):
        if not resume and not overwrite:
            raise OutputExistsError(f"{out} already exists (use --overwrite to replace it, or --resume to continue it)")
        if not is_run_dir(out):
            if resume:
                raise OutputExistsError(f"--resume: {out} is not an ai4life-kit run directory")
            raise OutputExistsError(f"{out} exists and was not created by ai4life-kit; refusing to delete it")
    if spec.is_self_supervised and target:
        raise DataError(f"{spec.algorithm.name} is self-supervised: it trains on noisy images only; drop --target")
    if not spec.is_self_supervised and not target:
        raise DataError(f"{spec.algorithm.name} needs --target images (clean for CARE, a second noisy set for n2n)")
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
    last_path = out / "checkpoints" / "last.pt"
    # Rank 0 looks and decides for every rank: a directory appearing meanwhile must not make one rank
    # skip a collective (or a resume) that another makes.
    dist.run_on_main(_lock_if_present, out, lock)
    resuming = bool(dist.broadcast_object(resume and last_path.is_file() if dist.is_main else None))
    # Everything that can reject the data happens before the run directory is touched.
    dev = dist.device
    dims = spec.data.dims
    ts = load_training_set(data, target, dims, spec.data.axes, spec.data.loading, spec.data.cache_mb)
    if spec.data.n_channels is not None and spec.data.n_channels != ts.n_channels:
        raise DataError(f"the spec says data.n_channels={spec.data.n_channels} but the images have {ts.n_channels}")
    spec = spec.model_copy(deep=True)
    spec.data.n_channels = ts.n_channels
    if resuming:
        # Every rank reads the same run directory (locked) and comes to the same verdict.
        norm = _check_resume(out, spec, ts, log)
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

    # Rank 0 creates or replaces the run directory only once every rank has passed the checks above
    # (no rank may find the fresh directory and call it "already exists"); the others go on once it exists.
    dist.barrier()
    dist.run_on_main(
        _prepare_run_dir,
        out,
        spec,
        ts,
        norm,
        lock,
        resume=resume,
        resuming=resuming,
        overwrite=overwrite,
        log=log,
    )
    cfg = spec.training
    torch.manual_seed(cfg.seed)
    layout = channels_last(dims)
    model = build_model(spec).to(dev, memory_format=layout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    sched = _scheduler(opt, spec)
    # Every rank draws its own patches; rank 0 keeps the single-process stream.
    gen = torch.Generator(device=dev).manual_seed(cfg.seed + dist.rank)
    mspec = _mask_spec(spec)
    loss_kind = getattr(spec.algorithm, "loss", "mse")
    val_batches = (
        _fixed_validation(val_sampler, cfg.val_patches, cfg.batch_size, mspec, cfg.seed) if dist.is_main else []
    )
    rotate = patch[-1] == patch[-2] and not isinstance(spec.algorithm, StructN2VAlgorithm)
    flip_axes = tuple(range(-dims, 0))

    start_epoch, step, best, stale = 0, 0, float("inf"), 0
    rows = []
    if resuming:
        state = TrainingState.read(last_path)
        model.load_state_dict(state.model_state)
        opt.load_state_dict(state.optimizer_state)
        sched.load_state_dict(state.scheduler_state)
        _restore_rng(gen, state.to_dict(), dist, cfg.seed)
        start_epoch, step = state.epoch, state.global_step
        best, stale = state.best_val_loss, state.epochs_without_improvement
        rows = [r for r in read_metrics(out / "metrics.csv") if r["epoch"] <= start_epoch]
    # Wrapped after loading the checkpoint: DDP starts every rank from rank 0's weights. `model` stays
    # the plain module for validation (rank 0 alone, no collectives) and for checkpoints.
    net = dist.wrap(model)
    if cfg.compile:
        # Only the training forward/backward is compiled; validation and checkpoints use the plain
        # module, so state dicts keep their keys and run directories look the same either way.
        net = torch.compile(net)

    t_start = time.perf_counter()
    bar = EpochProgress(enabled=progress and dist.is_main, steps=cfg.steps_per_epoch, batch_size=cfg.batch_size)
    finished_early = stale >= (cfg.early_stopping_patience or math.inf)
    with bar:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            if finished_early:
                break
            net.train()
            t0 = time.perf_counter()
            bar.start_epoch(epoch, cfg.epochs)
            running = torch.zeros((), device=dev)
            for _ in range(cfg.steps_per_epoch):
                x, y = train_sampler.sample(local_batch, gen)
                if spec.data.augment:
                    x, y = (
                        augment_batch([x, y], gen, rotate, flip_axes)
                        if y is not None
                        else (augment_batch([x], gen, rotate, flip_axes)[0], None)
                    )
                inp, mask = mask_batch(x, mspec, gen) if mspec is not None else (x, None)
                inp = inp.contiguous(memory_format=layout)
                with autocast(dev, cfg.precision):
                    pred = net(inp)
                loss = _loss(pred, x, y, mask, loss_kind)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.detach()
                step += 1
                bar.advance(loss)
            seconds = time.perf_counter() - t0
            train_loss = dist.all_reduce_mean(running / cfg.steps_per_epoch).item()
            # Validated on rank 0, the result shared: every rank takes the same scheduler/early-stop decisions.
            val_loss, val_psnr = dist.broadcast_object(
                _validate(model, val_batches, dev, cfg.precision, loss_kind) if dist.is_main else None
            )
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(val_loss)
            else:
                sched.step()
            improved = val_loss < best
            if improved:
                best, stale = val_loss, 0
            else:
                stale += 1
            rng_states = dist.all_gather_object(gen.get_state())  # CPU byte tensors: weights_only loads them
            last = TrainingState(
                model_args=model_args(spec),
                model_state=model.state_dict(),
                optimizer_state=opt.state_dict(),
                scheduler_state=sched.state_dict(),
                epoch=epoch,
                global_step=step,
                best_val_loss=best,
                epochs_without_improvement=stale,
                rng_state=rng_states[0],
                rng_states=rng_states,
                world_size=dist.world_size,
            )
            best_ckpt = ModelCheckpoint(last.model_args, last.model_state, epoch, val_loss) if improved else None
            rows.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "val_psnr": val_psnr,
                    "lr": opt.param_groups[0]["lr"],
                    "patches_per_s": cfg.steps_per_epoch * cfg.batch_size / seconds,
                    "seconds": seconds,
                }
            )
            dist.run_on_main(_write_epoch, out, last, best_ckpt, rows)
            bar.end_epoch(train_loss, val_loss, val_psnr, improved)
            if cfg.early_stopping_patience is not None and stale >= cfg.early_stopping_patience:
                finished_early = True

    best_row = min(rows, key=lambda r: r["val_loss"]) if rows else {}
    summary = TrainingSummary(
        algorithm=spec.algorithm.name,
        # The files the arguments resolved to (absolute), not the arguments: a folder or a glob
        # names no image, and packaging reads its test tensors from these very files.
        files=[str(p) for p in ts.paths],
        target_files=[str(p) for p in ts.target_paths] if ts.target_paths is not None else None,
        data_arguments=[str(p) for p in data],
        target_arguments=[str(p) for p in target] if target else None,
        inputs=_file_entries(ts.paths, ts.axes, ts.shapes, ts.dtypes),
        # Targets have their inputs' shapes (load_training_set checks it).
        targets=_file_entries(ts.target_paths, ts.target_axes, ts.shapes, ts.target_dtypes)
        if ts.target_paths is not None
        else None,
        validation="held-out files"
        if val_set is not None and len(ts.images) > 1
        else ("held-out region" if val_set is not None else "training patches (val_fraction 0)"),
        n_channels=ts.n_channels,
        data_loading="lazy" if ts.lazy else "memory",
        processes=dist.world_size,
        epochs_run=int(rows[-1]["epoch"]) if rows else 0,
        early_stopped=finished_early,
        steps=step,
        best_epoch=best_row.get("epoch"),
        val_loss=best_row.get("val_loss"),
        val_psnr=best_row.get("val_psnr"),
        device=str(dev),
        seconds_this_session=time.perf_counter() - t_start,
    )
    dist.run_on_main(_write_report, out, rows, f"{spec.name or spec.algorithm.name} ({spec.algorithm.name})", summary)
    return out
