"""PNG panels of one prediction with its uncertainty: input | output | uncertainty map (| error).

Where people would rather look than read: the map shows at a glance which structures the
network is unsure of, and, with ground truth, whether the error sits where the map says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ai4life_kit.fileio import atomic_path

__all__ = ["display_plane", "write_uncertainty_panel", "write_reliability_plot"]

_PERCENTILES = (1.0, 99.8)


def display_plane(image: np.ndarray, axes: str) -> np.ndarray:
    """The 2D ``YX`` plane a panel shows: first sample / time point / channel, middle Z slice."""
    a = np.asarray(image, dtype=np.float32)
    for letter in axes[:-2]:
        i = axes.index(letter) - (len(axes) - a.ndim)
        a = np.take(a, a.shape[i] // 2 if letter == "Z" else 0, axis=i)
    return a


def _stretch(*planes: np.ndarray) -> tuple[float, float]:
    lo, hi = (float(v) for v in np.percentile(np.concatenate([p.ravel() for p in planes]), _PERCENTILES))
    return lo, hi if hi > lo else lo + 1.0


def write_uncertainty_panel(
    path: Path,
    noisy: np.ndarray,
    mean: np.ndarray,
    uncertainty: np.ndarray,
    axes: str,
    truth: np.ndarray | None = None,
    uncertainty_label: str = "Laplace scale b",
    overwrite: bool = False,
) -> Path:
    """Write the panel as a PNG (atomically) and return its path.

    Input and output share one grey stretch (1st-99.8th percentile of both), so they compare
    like for like. The uncertainty map and the absolute error (when ``truth`` is given) share one
    colour scale starting at zero, in intensity units, so a well calibrated map looks like the
    error: for a Laplace, the mean absolute error equals the scale ``b``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    planes = [display_plane(a, axes) for a in (noisy, mean, uncertainty)]
    titles = ["input", "output (mean)", uncertainty_label]
    maps = [planes[2]]
    if truth is not None:
        error = np.abs(display_plane(truth, axes) - planes[1])
        planes.append(error)
        titles.append("|output - ground truth|")
        maps.append(error)
    grey = _stretch(planes[0], planes[1])
    top = float(np.percentile(np.concatenate([m.ravel() for m in maps]), 99.5)) or 1.0
    fig, axs = plt.subplots(1, len(planes), figsize=(3.6 * len(planes), 3.9), dpi=110, squeeze=False)
    for k, (ax, plane, title) in enumerate(zip(axs[0], planes, titles, strict=True)):
        if k < 2:
            ax.imshow(plane, cmap="gray", vmin=grey[0], vmax=grey[1], interpolation="nearest")
        else:
            im = ax.imshow(plane, cmap="magma", vmin=0.0, vmax=top, interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(Path(path), overwrite) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def write_reliability_plot(
    path: Path, curves: dict[str, list[dict[str, float]]], title: str = "reliability", overwrite: bool = False
) -> Path:
    """Binned predicted mean |error| against the observed one, one line per entry of ``curves``.

    ``curves`` maps a label to :func:`ai4life_kit.laplace.reliability` rows; the dashed diagonal
    is calibration (a Laplace's ``E|error| = b``). Points above it: the maps are too small.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.3), dpi=110)
    top = 0.0
    for label, rows in curves.items():
        b, e = [r["mean_b"] for r in rows], [r["mean_abs_error"] for r in rows]
        ax.plot(b, e, marker="o", label=label)
        top = max(top, *b, *e)
    ax.plot([0, top], [0, top], color="grey", linestyle="--", label="calibrated")
    ax.set_xlabel("predicted mean |error| (Laplace b; sigma sqrt(2/pi) for a spread)")
    ax.set_ylabel("observed mean |error|")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(Path(path), overwrite) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
