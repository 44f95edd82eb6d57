"""Per-channel normalisation: statistics computed once over the training data, and the arithmetic.

Training (in memory and lazy) and prediction (in memory and out of core) all normalise with
:func:`normalise` and map back with :func:`denormalise`, so every path gives the same float32
numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ai4life_kit.errors import DataError

__all__ = ["channel_stats", "denormalise", "normalise"]


def channel_stats(images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> tuple[list[float], list[float]]:
    """Mean and standard deviation per channel of canonical ``(S, C, *spatial)`` arrays.

    Accumulated in float64 (sums of millions of uint16-range values lose precision in float32).
    A constant channel has no contrast to learn from and would divide by zero: it is an error.
    """
    n_channels = images[0].shape[1]
    total = np.zeros(n_channels)
    total_sq = np.zeros(n_channels)
    count = 0
    for i, img in enumerate(images):
        axes = (0, *range(2, img.ndim))
        per_file_std = img.std(axis=axes, dtype=np.float64)
        if np.any(per_file_std == 0):
            name = names[i] if names is not None else f"image {i}"
            raise DataError(f"{name} is constant in channel {int(np.argmin(per_file_std))}: nothing to learn from")
        total += img.sum(axis=axes, dtype=np.float64)
        total_sq += np.square(img, dtype=np.float64).sum(axis=axes)
        count += img.size // n_channels
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.tolist(), std.tolist()


def _per_channel(values: Sequence[float], spatial_ndim: int) -> np.ndarray:
    """float32 ``(C, 1, ..., 1)``: broadcasts over ``(C, *spatial)`` tiles and ``(B, C, *spatial)`` batches."""
    return np.asarray(values, np.float32).reshape((-1,) + (1,) * spatial_ndim)


def normalise(x: np.ndarray, mean: Sequence[float], std: Sequence[float], spatial_ndim: int) -> np.ndarray:
    """``(x - mean[c]) / std[c]`` in float32, for arrays whose last axes are ``(C, *spatial)``."""
    return (x - _per_channel(mean, spatial_ndim)) / _per_channel(std, spatial_ndim)


def denormalise(y: np.ndarray, mean: Sequence[float], std: Sequence[float], spatial_ndim: int) -> np.ndarray:
    """``y * std[c] + mean[c]``, computed in place in ``y`` (float32) and returned."""
    y *= _per_channel(std, spatial_ndim)
    y += _per_channel(mean, spatial_ndim)
    return y
