"""The Laplace distribution of probabilistic restoration (Weigert et al. 2018, CSBDeep).

A probabilistic network predicts, per pixel, the location ``mu`` and the scale ``b`` of a
Laplace distribution, ``p(y) = exp(-|y - mu| / b) / (2 b)``. Training minimises its negative
log-likelihood; prediction turns the scale into central intervals, and evaluation checks how
often the truth falls inside them (coverage).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["LEVELS", "laplace_nll", "interval_halfwidth", "coverage", "reliability", "calibration"]

# The central intervals whose coverage the kit reports.
LEVELS = (0.5, 0.9)


def laplace_nll(mean: torch.Tensor, scale: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of ``y`` under Laplace(``mean``, ``scale``).

    ``|y - mu| / b + log(2 b)`` averaged over every element: the loss CSBDeep's probabilistic
    CARE trains with, including its constant ``log 2`` so the value is the true NLL.
    """
    return ((y - mean).abs() / scale + torch.log(2 * scale)).mean()


def interval_halfwidth(scale: np.ndarray | float, level: float) -> np.ndarray | float:
    """Half-width of the central interval holding ``level`` of a Laplace's mass: ``b * ln(1 / (1 - level))``.

    ``P(|Y - mu| <= t) = 1 - exp(-t / b)``, so the 50 % interval is ``mu +- b ln 2`` and the 90 %
    one ``mu +- b ln 10``.
    """
    if not 0 < level < 1:
        raise ValueError(f"interval level must be between 0 and 1, got {level}")
    return scale * math.log(1 / (1 - level))


def coverage(truth: np.ndarray, mean: np.ndarray, scale: np.ndarray, level: float) -> float:
    """Share of ``truth`` pixels inside the predicted central ``level`` intervals (nominal: ``level``)."""
    half = interval_halfwidth(np.asarray(scale, np.float64), level)
    return float(np.mean(np.abs(np.asarray(truth, np.float64) - np.asarray(mean, np.float64)) <= half))


def reliability(scale: np.ndarray, error: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Pixels binned by predicted scale (equal-count bins): mean scale and mean absolute error per bin.

    A calibrated Laplace has ``E|error| = b`` in every bin: the points lie on the diagonal.
    """
    scale, error = np.ravel(scale), np.ravel(error)
    edges = np.quantile(scale, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, scale, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    sum_b = np.bincount(which, weights=scale, minlength=bins)
    sum_e = np.bincount(which, weights=error, minlength=bins)
    return [
        {"mean_b": float(sum_b[k] / counts[k]), "mean_abs_error": float(sum_e[k] / counts[k]), "pixels": int(counts[k])}
        for k in range(bins)
        if counts[k]
    ]


def calibration(truth: np.ndarray, mean: np.ndarray, scale: np.ndarray, bins: int = 10) -> dict[str, object]:
    """How honest predicted Laplace scales are about the errors against ``truth``.

    Returns
    -------
    dict
        ``coverage50`` / ``coverage90`` (nominal 0.5 / 0.9), ``spearman`` (rank correlation of
        the scale with the absolute error: does the map point at the errors?),
        ``error_over_scale`` (mean |error| / mean scale; 1 when calibrated, and the factor that
        would calibrate the scales on average), and ``reliability`` (:func:`reliability`).
    """
    from scipy.stats import spearmanr

    truth, mean, scale = (np.asarray(a, np.float64).ravel() for a in (truth, mean, scale))
    error = np.abs(truth - mean)
    out: dict[str, object] = {f"coverage{round(level * 100)}": coverage(truth, mean, scale, level) for level in LEVELS}
    out["spearman"] = float(spearmanr(scale, error).statistic)
    out["error_over_scale"] = float(error.mean() / scale.mean())
    out["pixels"] = int(error.size)
    out["reliability"] = reliability(scale, error, bins)
    return out
