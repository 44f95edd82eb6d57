"""The training loop: read top to bottom.

load data -> normalise -> sampler on the device -> model/optimiser -> (resume) ->
epochs of [sample, augment, mask, forward, loss, step] -> validate -> checkpoint, log, plot.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ai4life_kit.config import TrainingSpec, save_spec
from ai4life_kit.config.spec import StructN2VAlgorithm
from ai4life_kit.data.augment import augment_batch
from ai4life_kit.data.loading import TrainingSet, load_training_set, split_validation
from ai4life_kit.data.masking import MaskSpec, mask_batch
from ai4life_kit.data.normalization import channel_stats
from ai4life_kit.data.patches import PatchSampler
from ai4life_kit.errors import DataError, OutputExistsError
from ai4life_kit.fileio import atomic_write_text, prepare_output_dir
from ai4life_kit.models import build_model, model_args
from ai4life_kit.prediction.predictor import load_checkpoint
from ai4life_kit.runtime import autocast, channels_last, resolve_device
from ai4life_kit.training.checkpoint import save_checkpoint
from ai4life_kit.training.progress import EpochProgress
from ai4life_kit.training.report import plot_losses, read_metrics, write_metrics, write_summary

__all__ = ["train", "is_run_dir"]


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a run directory this tool created (safe to replace with --overwrite)."""
    return (path / "spec.yaml").is_file() or (path / "checkpoints").is_dir()


def _mask_spec(spec: TrainingSpec) -> MaskSpec | None:
    alg = spec.algorithm
    if not spec.is_self_supervised:
        return None
    struct_axis, span = None, 0
    if isinstance(alg, StructN2VAlgorithm):
        struct_axis = {"x": -1, "y": -2, "z": -3}[alg.struct_mask.axis]
        span = alg.struct_mask.span
    return MaskSpec(alg.masked_pixel_percentage, alg.roi_size, alg.resolved_replacement, struct_axis, span)


def _normalise(arrays: list[np.ndarray], mean, std) -> list[np.ndarray]:
    """``(x - mean[c]) / std[c]`` for canonical ``(S, C, *spatial)`` arrays."""
    shape = (1, -1) + (1,) * (arrays[0].ndim - 2)
    m = np.asarray(mean, np.float32).reshape(shape)
    s = np.asarray(std, np.float32).reshape(shape)
    return [(a - m) / s for a in arrays]


def _loss(pred: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor | None, kind: str):
    pred = pred.float()
    if mask is not None:  # blind-spot loss: only the masked pixels, against their true noisy values
        return ((pred - x) ** 2)[mask].mean()
    diff = pred - y
    return diff.abs().mean() if kind == "mae" else (diff**2).mean()


def _fixed_validation(sampler: PatchSampler, n: int, batch: int, mspec: MaskSpec | None, seed: int):
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
) -> Path:
    """Train a denoiser as ``spec`` says and write a run directory to ``out``.

    With ``resume`` an interrupted run continues from ``out/checkpoints/last.pt`` (at most the
    epoch in progress is lost); its saved spec and normalisation are reused. Returns ``out``.
    """
    out = Path(out)
    ckpt_dir = out / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    resuming = resume and last_path.is_file()
    occupied = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if resume and occupied and not is_run_dir(out):
        raise OutputExistsError(f"--resume: {out} is not an ai4life-kit run directory")
    if not resume and occupied and not overwrite:
        raise OutputExistsError(f"{out} already exists (use --overwrite to replace it, or --resume to continue it)")
    if spec.is_self_supervised and target:
        raise DataError(f"{spec.algorithm.name} is self-supervised: it trains on noisy images only; drop --target")
    if not spec.is_self_supervised and not target:
        raise DataError(f"{spec.algorithm.name} needs --target images (clean for CARE, a second noisy set for n2n)")

    # Everything that can reject the data happens before the run directory is touched.
    dev = resolve_device(device)
    dims = spec.data.dims
    ts = load_training_set(data, target, dims, spec.data.axes)
    if spec.data.n_channels is not None and spec.data.n_channels != ts.n_channels:
        raise DataError(f"the spec says data.n_channels={spec.data.n_channels} but the images have {ts.n_channels}")
    spec = spec.model_copy(deep=True)
    spec.data.n_channels = ts.n_channels
    patch = spec.data.patch_size
    train_set, val_set = split_validation(ts, spec.data.val_fraction, patch)
    norm_path = out / "normalization.json"
    if resuming and norm_path.is_file():
        norm = json.loads(norm_path.read_text())
    else:
        mean, std = channel_stats(train_set.images, train_set.names)
        t_mean, t_std = (mean, std)
        if train_set.targets is not None:
            t_mean, t_std = channel_stats(train_set.targets, [f"target {n}" for n in train_set.names])
        norm = {"mean": mean, "std": std, "target_mean": t_mean, "target_std": t_std}

    def sampler_for(s: TrainingSet) -> PatchSampler:
        imgs = _normalise(s.images, norm["mean"], norm["std"])
        tgts = None if s.targets is None else _normalise(s.targets, norm["target_mean"], norm["target_std"])
        return PatchSampler(imgs, tgts, patch, dev, s.names)

    train_sampler = sampler_for(train_set)
    val_sampler = sampler_for(val_set) if val_set is not None else train_sampler

    if not resume:
        prepare_output_dir(out, overwrite, is_ours=is_run_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for stale_tmp in [*out.glob(".*.tmp*"), *ckpt_dir.glob(".*.tmp*")]:
        stale_tmp.unlink()  # left by a killed run: atomic writes never reached their rename
    if not resuming:
        atomic_write_text(norm_path, json.dumps(norm, indent=2))
        save_spec(spec, out / "spec.yaml")
    cfg = spec.training
    torch.manual_seed(cfg.seed)
    layout = channels_last(dims)
    model = build_model(spec).to(dev, memory_format=layout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    sched = _scheduler(opt, spec)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed)
    mspec = _mask_spec(spec)
    loss_kind = getattr(spec.algorithm, "loss", "mse")
    val_batches = _fixed_validation(val_sampler, cfg.val_patches, cfg.batch_size, mspec, cfg.seed)
    rotate = patch[-1] == patch[-2] and not isinstance(spec.algorithm, StructN2VAlgorithm)
    flip_axes = tuple(range(-dims, 0))

    start_epoch, step, best, stale = 0, 0, float("inf"), 0
    rows = []
    if resuming:
        state = load_checkpoint(last_path)
        model.load_state_dict(state["model_state"])
        opt.load_state_dict(state["optimizer_state"])
        sched.load_state_dict(state["scheduler_state"])
        gen.set_state(state["rng_state"])
        start_epoch, step = state["epoch"], state["global_step"]
        best, stale = state["best_val_loss"], state["epochs_without_improvement"]
        rows = [r for r in read_metrics(out / "metrics.csv") if r["epoch"] <= start_epoch]

    t_start = time.perf_counter()
    bar = EpochProgress(enabled=progress, steps=cfg.steps_per_epoch, batch_size=cfg.batch_size)
    finished_early = stale >= (cfg.early_stopping_patience or math.inf)
    with bar:
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            if finished_early:
                break
            model.train()
            t0 = time.perf_counter()
            bar.start_epoch(epoch, cfg.epochs)
            running = torch.zeros((), device=dev)
            for _ in range(cfg.steps_per_epoch):
                x, y = train_sampler.sample(cfg.batch_size, gen)
                if spec.data.augment:
                    x, y = (
                        augment_batch([x, y], gen, rotate, flip_axes)
                        if y is not None
                        else (augment_batch([x], gen, rotate, flip_axes)[0], None)
                    )
                inp, mask = mask_batch(x, mspec, gen) if mspec is not None else (x, None)
                inp = inp.contiguous(memory_format=layout)
                with autocast(dev, cfg.precision):
                    pred = model(inp)
                loss = _loss(pred, x, y, mask, loss_kind)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                running += loss.detach()
                step += 1
                bar.advance(loss)
            seconds = time.perf_counter() - t0
            train_loss = (running / cfg.steps_per_epoch).item()
            val_loss, val_psnr = _validate(model, val_batches, dev, cfg.precision, loss_kind)
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(val_loss)
            else:
                sched.step()
            improved = val_loss < best
            if improved:
                best, stale = val_loss, 0
                save_checkpoint(
                    {
                        "model_args": model_args(spec),
                        "model_state": model.state_dict(),
                        "epoch": epoch,
                        "val_loss": val_loss,
                    },
                    ckpt_dir / "best.pt",
                )
            else:
                stale += 1
            save_checkpoint(
                {
                    "model_args": model_args(spec),
                    "model_state": model.state_dict(),
                    "optimizer_state": opt.state_dict(),
                    "scheduler_state": sched.state_dict(),
                    "epoch": epoch,
                    "global_step": step,
                    "best_val_loss": best,
                    "epochs_without_improvement": stale,
                    "rng_state": gen.get_state(),
                },
                last_path,
            )
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
            write_metrics(rows, out / "metrics.csv")
            bar.end_epoch(train_loss, val_loss, val_psnr, improved)
            if cfg.early_stopping_patience is not None and stale >= cfg.early_stopping_patience:
                finished_early = True

    if rows:
        plot_losses(rows, out / "loss.png", f"{spec.name or spec.algorithm.name} ({spec.algorithm.name})")
    best_row = min(rows, key=lambda r: r["val_loss"]) if rows else {}
    write_summary(
        {
            "algorithm": spec.algorithm.name,
            "files": [str(Path(p)) for p in data],
            "target_files": [str(Path(p)) for p in target] if target else None,
            "inputs": [
                {"name": n, "axes": a, "shape": list(s), "dtype": d}
                for n, a, s, d in zip(ts.names, ts.axes, ts.shapes, ts.dtypes, strict=True)
            ],
            "validation": "held-out files"
            if val_set is not None and len(ts.images) > 1
            else ("held-out region" if val_set is not None else "training patches (val_fraction 0)"),
            "n_channels": ts.n_channels,
            "epochs_run": int(rows[-1]["epoch"]) if rows else 0,
            "early_stopped": finished_early,
            "steps": step,
            "best_epoch": best_row.get("epoch"),
            "val_loss": best_row.get("val_loss"),
            "val_psnr": best_row.get("val_psnr"),
            "device": str(dev),
            "seconds_this_session": time.perf_counter() - t_start,
        },
        out / "training_summary.json",
    )
    return out
