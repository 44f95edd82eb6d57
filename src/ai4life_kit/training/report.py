"""Per-epoch metrics (CSV), the loss-curve PNG and the training summary of a run directory."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ai4life_kit.fileio import atomic_path, atomic_write_text

__all__ = ["METRIC_FIELDS", "read_metrics", "write_metrics", "plot_losses"]

METRIC_FIELDS = ["epoch", "step", "train_loss", "val_loss", "val_psnr", "lr", "patches_per_s", "seconds"]


def read_metrics(path: Path) -> list[dict]:
    """Rows of an existing metrics CSV (numbers parsed), or an empty list."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            parsed = {k: (float(v) if v not in ("", None) else None) for k, v in row.items()}
            parsed["epoch"], parsed["step"] = int(parsed["epoch"]), int(parsed["step"])
            rows.append(parsed)
    return rows


def write_metrics(rows: list[dict], path: Path) -> None:
    """Rewrite the whole CSV atomically (it is small; a kill never leaves half a line)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_FIELDS})
    atomic_write_text(path, buf.getvalue())


def plot_losses(rows: list[dict], path: Path, title: str) -> None:
    """Training and validation loss per epoch (log scale), with validation PSNR where known."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [r["train_loss"] for r in rows], label="train loss")
    if any(r.get("val_loss") is not None for r in rows):
        ax.plot(epochs, [r.get("val_loss") for r in rows], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if all((r["train_loss"] or 0) > 0 for r in rows):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(loc="upper left")
    psnr = [r.get("val_psnr") for r in rows]
    if any(p is not None for p in psnr):
        ax2 = ax.twinx()
        ax2.plot(epochs, psnr, color="tab:green", linestyle="--", label="validation PSNR")
        ax2.set_ylabel("validation PSNR (dB)")
        ax2.legend(loc="upper right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
