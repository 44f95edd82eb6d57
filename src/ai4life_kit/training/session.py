"""One training session's optimisation: model, optimiser and patch stream, the epoch, its checkpoint.

:func:`start_session` builds (or, from ``last.pt``, restores) the state, :func:`train_epoch` runs
the steps of one epoch on every rank, and :func:`finish_epoch` validates on rank 0, steps the
scheduler and writes the epoch's files as one set (:func:`_write_epoch`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai4life_kit.config import TrainingSpec
from ai4life_kit.config.spec import StructN2VAlgorithm
from ai4life_kit.data.augment import augment_batch
from ai4life_kit.data.loading import TrainingSet
from ai4life_kit.data.masking import MaskSpec, mask_batch
from ai4life_kit.data.patches import PatchPositions
from ai4life_kit.fileio import atomic_paths
from ai4life_kit.laplace import laplace_nll
from ai4life_kit.models import build_model, model_args
from ai4life_kit.rundir import METRICS_FILE, ModelCheckpoint, TrainingState
from ai4life_kit.runtime import autocast, channels_last
from ai4life_kit.training.distributed import DistContext
from ai4life_kit.training.progress import EpochProgress
from ai4life_kit.training.report import read_metrics, write_metrics

__all__ = ["Prepared", "Session", "finish_epoch", "start_session", "train_epoch"]


@dataclasses.dataclass
class Prepared:
    """The data side of a run, the same on every rank: spec (with n_channels), files, normalisation, samplers."""

    spec: TrainingSpec
    ts: TrainingSet
    val_set: TrainingSet | None
    norm: dict[str, list[float]]
    train_sampler: Any
    val_sampler: Any
    device: torch.device
    world_size: int


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
    if kind == "laplace":  # means first, then scales (UNet(probabilistic=True))
        c = y.shape[1]
        return laplace_nll(pred[:, :c], pred[:, c:], y)
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
                preds.append(pred[:, : y.shape[1]].float())  # the means of a probabilistic network
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


def _ema_pairs(ema: torch.nn.Module, model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(average, weight) tensor pairs, taken once: state dict tensors share the modules' storage."""
    return list(zip(ema.state_dict().values(), model.state_dict().values(), strict=True))


@torch.no_grad()
def _update_ema(pairs: list[tuple[torch.Tensor, torch.Tensor]], decay: float, step: int) -> None:
    """``ema <- d * ema + (1 - d) * model`` with ``d = min(decay, (1 + step) / (10 + step))``.

    The warm-up keeps the first steps' random weights from dominating a short training. Batch
    norm statistics are averaged alike; integer buffers (batch counters) are copied.
    """
    d = min(decay, (1 + step) / (10 + step))
    for e, m in pairs:
        if e.is_floating_point():
            e.lerp_(m, 1 - d)
        else:
            e.copy_(m)


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


@dataclasses.dataclass
class Session:
    """The optimisation state of a run: model, optimiser, RNG, counters, metrics rows."""

    dist: DistContext
    model: torch.nn.Module
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    gen: torch.Generator
    mspec: MaskSpec | None
    loss_kind: str
    val_batches: list
    rotate: bool
    flip_axes: tuple[int, ...]
    layout: torch.memory_format
    start_epoch: int = 0
    step: int = 0
    best: float = float("inf")
    stale: int = 0
    rows: list[dict] = dataclasses.field(default_factory=list)
    ema: torch.nn.Module | None = None  # averaged weights (training.ema_decay): validated and kept as best.pt
    ema_pairs: list[tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=list)

    @property
    def selected(self) -> torch.nn.Module:
        """The weights that are validated and become ``best.pt``: the average if there is one."""
        return self.ema if self.ema is not None else self.model


def start_session(prepared: Prepared, dist: DistContext, resume_from: Path | None) -> Session:
    """Model, optimiser, scheduler and patch stream, fresh or continued from ``resume_from`` (``last.pt``)."""
    spec, dev = prepared.spec, prepared.device
    cfg, patch, dims = spec.training, spec.data.patch_size, spec.data.dims
    torch.manual_seed(cfg.seed)
    layout = channels_last(dims)
    model = build_model(spec).to(dev, memory_format=layout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    sched = _scheduler(opt, spec)
    # Every rank draws its own patches; rank 0 keeps the single-process stream.
    gen = torch.Generator(device=dev).manual_seed(cfg.seed + dist.rank)
    mspec = _mask_spec(spec)
    val_batches = (
        _fixed_validation(prepared.val_sampler, cfg.val_patches, cfg.batch_size, mspec, cfg.seed)
        if dist.is_main
        else []
    )
    session = Session(
        dist=dist,
        model=model,
        net=model,
        opt=opt,
        sched=sched,
        gen=gen,
        mspec=mspec,
        loss_kind=getattr(spec.algorithm, "loss", "mse"),
        val_batches=val_batches,
        # structN2V's mask and isotropic CARE's degraded (axial) axis have a direction a
        # rotation would move; flips keep every axis where it was.
        rotate=patch[-1] == patch[-2]
        and not isinstance(spec.algorithm, StructN2VAlgorithm)
        and spec.task.kind != "isotropic",
        flip_axes=tuple(range(-dims, 0)),
        layout=layout,
    )
    if resume_from is not None:
        state = TrainingState.read(resume_from)
        model.load_state_dict(state.model_state)
        opt.load_state_dict(state.optimizer_state)
        sched.load_state_dict(state.scheduler_state)
        _restore_rng(gen, state.to_dict(), dist, cfg.seed)
        session.start_epoch, session.step = state.epoch, state.global_step
        session.best, session.stale = state.best_val_loss, state.epochs_without_improvement
        metrics = resume_from.parent.parent / METRICS_FILE
        session.rows = [r for r in read_metrics(metrics) if r["epoch"] <= session.start_epoch]
    if cfg.ema_decay is not None:
        session.ema = copy.deepcopy(model).eval()
        if resume_from is not None and state.ema_state is not None:
            session.ema.load_state_dict(state.ema_state)
        session.ema_pairs = _ema_pairs(session.ema, model)
    # Wrapped after loading the checkpoint: DDP starts every rank from rank 0's weights. `model` stays
    # the plain module for validation (rank 0 alone, no collectives) and for checkpoints.
    session.net = dist.wrap(model)
    if cfg.compile:
        # Only the training forward/backward is compiled; validation and checkpoints use the plain
        # module, so state dicts keep their keys and run directories look the same either way.
        session.net = torch.compile(session.net)
    return session


def train_epoch(session: Session, prepared: Prepared, local_batch: int, bar: EpochProgress) -> tuple[float, float]:
    """One epoch of [sample, augment, mask, forward, loss, step]; the mean loss over all ranks and the seconds."""
    spec, dev = prepared.spec, prepared.device
    cfg = spec.training
    gen, net = session.gen, session.net
    net.train()
    t0 = time.perf_counter()
    running = torch.zeros((), device=dev)
    for _ in range(cfg.steps_per_epoch):
        x, y = prepared.train_sampler.sample(local_batch, gen)
        if spec.data.augment:
            x, y = (
                augment_batch([x, y], gen, session.rotate, session.flip_axes)
                if y is not None
                else (augment_batch([x], gen, session.rotate, session.flip_axes)[0], None)
            )
        inp, mask = mask_batch(x, session.mspec, gen) if session.mspec is not None else (x, None)
        inp = inp.contiguous(memory_format=session.layout)
        with autocast(dev, cfg.precision):
            pred = net(inp)
        loss = _loss(pred, x, y, mask, session.loss_kind)
        session.opt.zero_grad(set_to_none=True)
        loss.backward()
        session.opt.step()
        running += loss.detach()
        session.step += 1
        if session.ema is not None:
            _update_ema(session.ema_pairs, cfg.ema_decay, session.step)
        bar.advance(loss)
    seconds = time.perf_counter() - t0
    return session.dist.all_reduce_mean(running / cfg.steps_per_epoch).item(), seconds


def finish_epoch(
    session: Session, prepared: Prepared, out: Path, epoch: int, train_loss: float, seconds: float
) -> tuple[dict, bool]:
    """Validate, step the scheduler, track the best epoch and write the epoch's files; the metrics row."""
    dist, cfg = session.dist, prepared.spec.training
    # Validated on rank 0, the result shared: every rank takes the same scheduler/early-stop decisions.
    val_loss, val_psnr = dist.broadcast_object(
        _validate(session.selected, session.val_batches, prepared.device, cfg.precision, session.loss_kind)
        if dist.is_main
        else None
    )
    if isinstance(session.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        session.sched.step(val_loss)
    else:
        session.sched.step()
    improved = val_loss < session.best
    if improved:
        session.best, session.stale = val_loss, 0
    else:
        session.stale += 1
    rng_states = dist.all_gather_object(session.gen.get_state())  # CPU byte tensors: weights_only loads them
    last = TrainingState(
        model_args=model_args(prepared.spec),
        model_state=session.model.state_dict(),
        optimizer_state=session.opt.state_dict(),
        scheduler_state=session.sched.state_dict(),
        epoch=epoch,
        global_step=session.step,
        best_val_loss=session.best,
        epochs_without_improvement=session.stale,
        rng_state=rng_states[0],
        rng_states=rng_states,
        world_size=dist.world_size,
        ema_state=session.ema.state_dict() if session.ema is not None else None,
    )
    selected = session.selected.state_dict()
    best_ckpt = ModelCheckpoint(last.model_args, selected, epoch, val_loss) if improved else None
    row = {
        "epoch": epoch,
        "step": session.step,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_psnr": val_psnr,
        "lr": session.opt.param_groups[0]["lr"],
        "patches_per_s": cfg.steps_per_epoch * cfg.batch_size / seconds,
        "seconds": seconds,
    }
    session.rows.append(row)
    dist.run_on_main(_write_epoch, out, last, best_ckpt, session.rows)
    return row, improved
