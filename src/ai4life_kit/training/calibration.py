"""Per-level calibration of a probabilistic run's intervals, fitted on its validation split.

A Laplace scale ``b`` can be right on average (mean |error| = mean ``b``) and still give intervals
that hold too few pixels at one level and too many at another: real errors are not exactly
Laplace-shaped (measured on stardist's nuclei: the 50 % interval held 42 %, the 90 % one 93 %).
At the end of training this module predicts the held-out validation images with the best
checkpoint, as ``predict`` does, and stores per level ``p`` the factor ``s_p`` that makes the
interval ``mean +- s_p * b * ln(1 / (1 - p))`` hold exactly ``p`` of the validation pixels (the
empirical quantile of ``|y - mu| / b``: split-conformal calibration). The maps ``predict``
writes stay the network's own ``b``; the factors are reported (training log, package README) and
``evaluate --uncertainty --calibration RUN`` scores the calibrated intervals.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.data.loading import TrainingSet
from ai4life_kit.data.normalization import denormalise, read_json_object
from ai4life_kit.errors import ModelLoadError
from ai4life_kit.fileio import atomic_write_text
from ai4life_kit.rundir import CALIBRATION_FILE, FORMAT_VERSION

__all__ = [
    "CALIBRATION_LEVELS",
    "MAX_PIXELS",
    "calibrate_run",
    "fit_interval_factors",
    "read_calibration",
    "summary_line",
]

CALIBRATION_LEVELS = (0.5, 0.8, 0.9, 0.95)
MAX_PIXELS = 4_000_000
"""Validation pixels used at most: quantiles to about 0.1 %, a few seconds of prediction."""


def fit_interval_factors(ratios: np.ndarray, levels: tuple[float, ...] = CALIBRATION_LEVELS) -> dict[str, Any]:
    """Factors ``s_p = quantile_p(|y - mu| / b) / ln(1 / (1 - p))`` and the coverage before them.

    ``ratios`` are ``|y - mu| / b`` per pixel. ``mle_factor`` is ``mean(ratios)``, the single
    factor that maximises the Laplace likelihood (1 when the scales are right on average).
    """
    r = np.asarray(ratios, np.float64).ravel()
    if r.size == 0 or not np.isfinite(r).all():
        raise ValueError("calibration needs finite ratios of at least one pixel")
    widths = [math.log(1 / (1 - p)) for p in levels]
    return {
        "levels": list(levels),
        "factors": [float(np.quantile(r, p) / w) for p, w in zip(levels, widths, strict=True)],
        "coverage_uncalibrated": [float(np.mean(r <= w)) for w in widths],
        "mle_factor": float(r.mean()),
        "pixels": int(r.size),
    }


def _raw(view: Any, normalised: bool, mean: list[float], std: list[float], nd: int) -> np.ndarray:
    x = np.array(view.to_array() if hasattr(view, "to_array") else view, dtype=np.float32, copy=True)
    return denormalise(x, mean, std, nd) if normalised else x  # denormalise overwrites its float32 copy


def calibrate_run(out: Path, val_set: TrainingSet, norm: dict[str, list[float]], device: Any) -> dict[str, Any]:
    """Fit :func:`fit_interval_factors` on ``val_set`` with ``out``'s best checkpoint; write and return it."""
    from ai4life_kit.prediction import Predictor

    predictor = Predictor.from_run_dir(out, device)
    nd, c = predictor.spatial_ndim, len(predictor.target_mean)
    ratios, used = [], 0
    for image, target in zip(val_set.images, val_set.targets or [], strict=True):
        x = _raw(image, val_set.normalised, norm["mean"], norm["std"], nd)
        y = _raw(target, val_set.normalised, norm["target_mean"], norm["target_std"], nd)
        pred = predictor.predict_canonical(x, with_scale=True)
        ratios.append((np.abs(y - pred[:, :c]) / pred[:, c:]).ravel())
        used += ratios[-1].size
        if used >= MAX_PIXELS:
            break
    result = {"format_version": FORMAT_VERSION, "source": "validation split, best checkpoint"}
    result |= fit_interval_factors(np.concatenate(ratios)[:MAX_PIXELS])
    atomic_write_text(Path(out) / CALIBRATION_FILE, json.dumps(result, indent=2))
    return result


def read_calibration(run_dir: Path) -> dict[str, Any] | None:
    """``RUN/uncertainty_calibration.json`` (levels and factors), or ``None`` when the run has none."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    data = read_json_object(path)
    levels, factors = data.get("levels"), data.get("factors")
    ok = isinstance(levels, list) and isinstance(factors, list) and len(levels) == len(factors) > 0
    if not ok or not all(isinstance(v, (int, float)) and 0 < v for v in [*levels, *factors]):
        raise ModelLoadError(f"{path} is not a calibration ai4life-kit wrote (levels and positive factors)")
    return data


def summary_line(cal: dict[str, Any]) -> str:
    """``50 %: held 42 %, x1.21; 90 %: held 93 %, x0.93`` for the training log."""
    parts = [
        f"{round(p * 100)} %: held {round(cov * 100)} %, x{s:.2f}"
        for p, cov, s in zip(cal["levels"], cal["coverage_uncalibrated"], cal["factors"], strict=True)
    ]
    return "; ".join(parts)
