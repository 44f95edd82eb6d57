"""Rich progress bar for training: loss and patches/s per step, a summary line per epoch."""

from __future__ import annotations

import time

import torch

__all__ = ["EpochProgress"]


class EpochProgress:
    """A progress bar per epoch (quiet when ``enabled`` is false, e.g. in tests or under CI)."""

    def __init__(self, enabled: bool, steps: int, batch_size: int) -> None:
        self.enabled = enabled
        self.steps = steps
        self.batch_size = batch_size
        self._progress = None
        self._task = None
        self._t0 = 0.0
        self._done = 0
        self._last_loss = None

    def __enter__(self) -> EpochProgress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[speed]} patches/s"),
                TimeElapsedColumn(),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self._t0 = time.perf_counter()
        self._done = 0
        if self._progress is not None:
            self._task = self._progress.add_task(
                "train", total=self.steps, epoch=f"{epoch}/{epochs}", loss="-", speed="-"
            )

    def advance(self, loss: torch.Tensor) -> None:
        self._done += 1
        if self._progress is None:
            return
        # Reading the loss syncs with the device: only every 10 steps, not every step.
        fields = {}
        if self._done % 10 == 0 or self._done == self.steps:
            elapsed = time.perf_counter() - self._t0
            fields = {"loss": f"{loss.item():.4g}", "speed": f"{self._done * self.batch_size / elapsed:.0f}"}
        self._progress.update(self._task, advance=1, **fields)

    def end_epoch(self, train_loss: float, val_loss: float, val_psnr: float | None, improved: bool) -> None:
        if self._progress is None:
            return
        psnr = f", val PSNR {val_psnr:.2f} dB" if val_psnr is not None else ""
        mark = " (best)" if improved else ""
        self._progress.console.print(f"  train loss {train_loss:.4g}, val loss {val_loss:.4g}{psnr}{mark}")
