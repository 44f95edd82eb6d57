"""Temporal-denoising metrics of the AI4Life Calcium Imaging Denoising Challenge 2025 (CIDC25).

CIDC25 scores denoised calcium-imaging videos of shape (T, Y, X) against a ground truth. Its
reference describes the ranking metric, stSNR, as "a convex combination of spatial SNR (per frame)
and temporal SNR (per pixel trace), averaged over files". This module implements it as follows:

- :func:`snr_db`: ``10 log10(sum(gt**2) / sum((gt - x)**2))`` over all elements given. This is the
  formula a participant published, ``10 log10(mean(gt**2) / mean((gt - x)**2))``: the means run
  over the same elements, so the two are equal. The signal power is *not* mean-subtracted, so a
  constant offset in the ground truth (a camera baseline) raises the SNR.
- :func:`spatial_snr`: the SNR of every frame (over Y, X), then the mean of these dB values over
  frames.
- :func:`temporal_snr`: the SNR of every pixel's trace (over T), then the mean of these dB values
  over pixels.
- :func:`stsnr`: ``alpha * spatial_snr + (1 - alpha) * temporal_snr``. **The official alpha is not
  known**; :data:`DEFAULT_ALPHA` = 0.5 is the value the participant used.
- :func:`percentile_range_psnr`: the extra, unranked PSNR of CIDC25, whose data range is the 97th
  minus the 3rd percentile of the ground-truth stack instead of its max minus min.
- :func:`evaluate_video`: all of the above for one video. "Averaged over files" is left to the
  caller: average the per-video values of :func:`evaluate_video` across files.

Choices the reference leaves open, documented because the numbers depend on them:

- Per-frame and per-trace SNRs are averaged **in dB** (not as power ratios).
- A frame or trace whose ground truth is all zero has no defined SNR and is skipped.
- A frame or trace predicted exactly has an infinite SNR, which would make the mean infinite
  whatever the other frames are. Each per-frame and per-trace SNR is therefore capped at
  :data:`SNR_CEILING_DB` (100 dB, a power ratio of 1e10, far above any real denoiser).
  :func:`snr_db` and :func:`percentile_range_psnr` are single numbers and are not capped.

Everything is computed in float64 (inputs are typically int16, whose differences and squares
overflow in their own dtype). Videos are processed in blocks of frames so that a 2000 x 512 x 512
int16 video (1 GiB) needs a few blocks of float64 scratch, not several 4 GiB float64 copies.
Only numpy is used.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from ai4life_kit.errors import DataError

__all__ = [
    "DEFAULT_ALPHA",
    "PERCENTILE_HIGH",
    "PERCENTILE_LOW",
    "SNR_CEILING_DB",
    "evaluate_video",
    "percentile_range_psnr",
    "snr_db",
    "spatial_snr",
    "stsnr",
    "temporal_snr",
]

# The weight of the spatial SNR in stSNR. The official CIDC25 value is unknown; 0.5 is what a
# participant used. Change it here (or pass alpha) once the organisers publish theirs.
DEFAULT_ALPHA = 0.5
# Cap of each per-frame / per-trace SNR, so that exactly predicted frames or traces (infinite SNR)
# keep the means finite. 100 dB is a power ratio of 1e10: no real denoiser comes near it.
SNR_CEILING_DB = 100.0
# CIDC25's percentiles of the ground truth that define the data range of its extra PSNR.
PERCENTILE_LOW = 3.0
PERCENTILE_HIGH = 97.0
# float64 elements per block of frames (32 MiB): large enough for fast reductions, small enough
# that the few float64 scratch arrays of a block stay far below the size of a whole video.
_BLOCK_ELEMENTS = 1 << 22


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _check_pair(gt: ArrayLike, x: ArrayLike, video: bool) -> tuple[np.ndarray, np.ndarray]:
    """Arrays of the same non-empty shape and a real dtype; ``video``: also exactly 3D (T, Y, X)."""
    gt, x = np.asarray(gt), np.asarray(x)
    if gt.shape != x.shape:
        raise DataError(f"prediction shape {x.shape} differs from ground-truth shape {gt.shape}")
    if video and gt.ndim != 3:
        raise DataError(f"expected a video of shape (T, Y, X), got an array of shape {gt.shape}")
    if gt.size == 0:
        raise DataError(f"arrays of shape {gt.shape} are empty")
    for what, a in (("ground truth", gt), ("prediction", x)):
        if a.dtype.kind not in "biuf":
            raise DataError(f"{what} has dtype {a.dtype}; expected real numbers")
    return gt, x


def _as_float64(a: np.ndarray, what: str) -> np.ndarray:
    """``a`` in float64 (a view when it already is: never write into it); NaN/Inf raise DataError."""
    out = np.asarray(a, dtype=np.float64)
    # Integers are always finite; only floats need the check.
    if a.dtype.kind == "f" and not np.isfinite(out).all():
        raise DataError(f"{what} contains NaN or Inf values")
    return out


def _db(signal: np.ndarray | float, error: np.ndarray | float) -> np.ndarray | np.floating:
    """``10 log10(signal / error)`` for ``signal > 0``; ``+inf`` where ``error == 0``.

    Written as a difference of logarithms: ``signal / error`` can overflow to inf (and warn) for
    a subnormal error, the difference cannot.
    """
    with np.errstate(divide="ignore"):  # log10(0) = -inf is the intended result for error == 0
        return 10.0 * (np.log10(signal) - np.log10(error))


class _VideoSums(NamedTuple):
    """Sums of squares of a video in float64: per frame (T,) and per pixel trace (Y, X)."""

    frame_signal: np.ndarray  # sum over (Y, X) of gt**2
    frame_error: np.ndarray  # sum over (Y, X) of (gt - x)**2
    pixel_signal: np.ndarray  # sum over T of gt**2
    pixel_error: np.ndarray  # sum over T of (gt - x)**2


def _video_sums(gt: np.ndarray, x: np.ndarray) -> _VideoSums:
    """One pass over a (T, Y, X) pair, a block of frames at a time (vectorised within the block)."""
    n_t, n_y, n_x = gt.shape
    frame_signal = np.empty(n_t)
    frame_error = np.empty(n_t)
    pixel_signal = np.zeros((n_y, n_x))
    pixel_error = np.zeros((n_y, n_x))
    step = max(1, _BLOCK_ELEMENTS // (n_y * n_x))
    for start in range(0, n_t, step):
        block = slice(start, min(start + step, n_t))
        g = _as_float64(gt[block], "ground truth")
        err = g - _as_float64(x[block], "prediction")  # a new array: safe to square in place
        err *= err
        g2 = g * g  # not in place: g may be a view of the caller's float64 array
        frame_signal[block] = g2.sum(axis=(1, 2))
        frame_error[block] = err.sum(axis=(1, 2))
        pixel_signal += g2.sum(axis=0)
        pixel_error += err.sum(axis=0)
    return _VideoSums(frame_signal, frame_error, pixel_signal, pixel_error)


def _total_sums(gt: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """``(sum(gt**2), sum((gt - x)**2))`` in float64 over arrays of any shape, in flat blocks."""
    g_flat, x_flat = gt.reshape(-1), x.reshape(-1)
    signal = error = 0.0
    for start in range(0, g_flat.size, _BLOCK_ELEMENTS):
        block = slice(start, start + _BLOCK_ELEMENTS)
        g = _as_float64(g_flat[block], "ground truth")
        err = g - _as_float64(x_flat[block], "prediction")
        signal += float(np.dot(g, g))
        error += float(np.dot(err, err))
    return signal, error


def _capped_mean_db(signal: np.ndarray, error: np.ndarray, what: str) -> float:
    """Mean over entries with ``signal > 0`` of ``min(SNR in dB, SNR_CEILING_DB)``.

    ``signal == 0`` means an all-zero ground truth (or values so tiny that their squares underflow
    float64): the SNR is undefined there, so the entry is skipped.
    """
    keep = signal > 0
    if not keep.any():
        raise DataError(f"{what}: the ground truth is zero in every one of them, so the SNR is undefined")
    values = np.minimum(_db(signal[keep], error[keep]), SNR_CEILING_DB)
    return float(values.mean())


def _spatial(sums: _VideoSums) -> float:
    return _capped_mean_db(sums.frame_signal, sums.frame_error, "spatial SNR over frames")


def _temporal(sums: _VideoSums) -> float:
    return _capped_mean_db(sums.pixel_signal.ravel(), sums.pixel_error.ravel(), "temporal SNR over pixel traces")


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha


def _check_percentiles(low: float, high: float) -> tuple[float, float]:
    low, high = float(low), float(high)
    if not 0.0 <= low < high <= 100.0:  # also rejects NaN
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}")
    return low, high


def _percentiles(a: np.ndarray, qs: tuple[float, ...]) -> np.ndarray:
    """``np.percentile(a.astype(np.float64), qs)`` (method "linear") without a float64 copy of ``a``.

    ``np.percentile`` interpolates integer arrays in their own dtype, and that overflows for int16
    (numpy 2.4: the median of int16 ``[-30000, 30000]`` comes out as 32768). So the order statistics
    are found with ``np.partition`` on a copy in ``a``'s dtype (int16: 2 bytes per element) and
    interpolated here in float64, with the same formulas as numpy's "linear" method.
    """
    flat = a.reshape(-1)
    n = flat.size
    pos = np.asarray(qs, dtype=np.float64) / 100.0 * (n - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    part = np.partition(flat, np.unique(np.concatenate([lo, hi])))
    below = part[lo].astype(np.float64)
    above = part[hi].astype(np.float64)
    gamma = pos - lo
    diff = above - below
    # numpy's _lerp: interpolate from the nearer end, which is exact at gamma = 0 and gamma = 1.
    return np.where(gamma >= 0.5, above - diff * (1.0 - gamma), below + diff * gamma)


def _psnr_from(error_sum: float, size: int, data_range: float) -> float:
    if error_sum == 0:
        return math.inf
    return float(20.0 * np.log10(data_range) - 10.0 * np.log10(error_sum / size))


def _percentile_range(gt: np.ndarray, low: float, high: float) -> float:
    p_low, p_high = _percentiles(gt, (low, high))
    data_range = float(p_high - p_low)
    if not data_range > 0:
        raise DataError(
            f"PSNR: the {high:g}th and {low:g}th percentiles of the ground truth are equal ({float(p_low)}),"
            " so the data range is 0 and the PSNR is undefined"
        )
    return data_range


# ---------------------------------------------------------------------------------------------
# public metrics
# ---------------------------------------------------------------------------------------------
def snr_db(gt: ArrayLike, x: ArrayLike) -> float:
    """Signal-to-noise ratio in dB of ``x`` against ``gt`` over all elements given.

    Parameters
    ----------
    gt, x
        Ground truth and prediction: real arrays of the same non-empty shape, any dtype
        (computed in float64).

    Returns
    -------
    float
        ``10 log10(sum(gt**2) / sum((gt - x)**2))``, equal to ``10 log10(mean(gt**2) / mean((gt - x)**2))``;
        ``+inf`` when ``x`` equals ``gt`` (not capped). The signal power is not mean-subtracted.

    Raises
    ------
    DataError
        On different shapes, empty arrays, NaN or Inf values, or an all-zero ``gt`` (SNR undefined).
    """
    gt, x = _check_pair(gt, x, video=False)
    signal, error = _total_sums(gt, x)
    if signal == 0:
        raise DataError("SNR: the ground truth is all zero, so the SNR is undefined")
    return float(_db(signal, error))


def spatial_snr(gt: ArrayLike, x: ArrayLike) -> float:
    """Spatial SNR of a video: the mean over frames of each frame's SNR in dB.

    Each frame ``t`` gets ``min(10 log10(sum_yx gt[t]**2 / sum_yx (gt[t] - x[t])**2), SNR_CEILING_DB)``;
    the result is the arithmetic mean of these **dB values** (not of the power ratios). Frames whose
    ground truth is all zero have no SNR and are left out of the mean. The cap at
    :data:`SNR_CEILING_DB` keeps exactly predicted frames (infinite SNR) from making the mean infinite.

    Parameters
    ----------
    gt, x
        Ground truth and prediction, (T, Y, X), same shape, any real dtype (computed in float64).

    Returns
    -------
    float
        At most :data:`SNR_CEILING_DB`.

    Raises
    ------
    DataError
        On different shapes, a shape that is not 3D, empty arrays, NaN or Inf values, or a ground
        truth that is zero in every frame.
    """
    gt, x = _check_pair(gt, x, video=True)
    return _spatial(_video_sums(gt, x))


def temporal_snr(gt: ArrayLike, x: ArrayLike) -> float:
    """Temporal SNR of a video: the mean over pixels of each pixel trace's SNR in dB.

    Each pixel ``(y, x)`` gets ``min(10 log10(sum_t gt[:, y, x]**2 / sum_t (gt - x)[:, y, x]**2), SNR_CEILING_DB)``;
    the result is the arithmetic mean of these **dB values** over pixels. Pixels whose ground-truth
    trace is all zero have no SNR and are left out of the mean. The cap at :data:`SNR_CEILING_DB`
    keeps exactly predicted traces (infinite SNR) from making the mean infinite.

    Parameters
    ----------
    gt, x
        Ground truth and prediction, (T, Y, X), same shape, any real dtype (computed in float64).

    Returns
    -------
    float
        At most :data:`SNR_CEILING_DB`.

    Raises
    ------
    DataError
        On different shapes, a shape that is not 3D, empty arrays, NaN or Inf values, or a ground
        truth whose every pixel trace is zero.
    """
    gt, x = _check_pair(gt, x, video=True)
    return _temporal(_video_sums(gt, x))


def stsnr(gt: ArrayLike, x: ArrayLike, alpha: float = DEFAULT_ALPHA) -> float:
    """CIDC25's ranking metric: ``alpha * spatial_snr(gt, x) + (1 - alpha) * temporal_snr(gt, x)``.

    Parameters
    ----------
    gt, x
        Ground truth and prediction, (T, Y, X), same shape, any real dtype.
    alpha
        Weight of the spatial SNR, in [0, 1]: 1 gives the pure spatial SNR, 0 the pure temporal
        SNR. The official value is unknown; the default :data:`DEFAULT_ALPHA` (0.5) is a
        participant's choice.

    Returns
    -------
    float
        In dB; at most :data:`SNR_CEILING_DB`.

    Raises
    ------
    ValueError
        If ``alpha`` is outside [0, 1] (or NaN).
    DataError
        As :func:`spatial_snr` and :func:`temporal_snr`.
    """
    alpha = _check_alpha(alpha)
    gt, x = _check_pair(gt, x, video=True)
    sums = _video_sums(gt, x)
    return alpha * _spatial(sums) + (1.0 - alpha) * _temporal(sums)


def percentile_range_psnr(
    gt: ArrayLike, x: ArrayLike, low: float = PERCENTILE_LOW, high: float = PERCENTILE_HIGH
) -> float:
    """PSNR in dB with the data range taken from percentiles of the ground truth (CIDC25's extra metric).

    ``10 log10(R**2 / mean((gt - x)**2))`` with ``R = percentile(gt, high) - percentile(gt, low)``
    over every element of ``gt`` (the whole stack, not per frame), percentiles as ``np.percentile``'s
    default "linear" method computed in float64. Unlike max minus min, ``R`` ignores a few hot or
    dead pixels.

    Parameters
    ----------
    gt, x
        Ground truth and prediction, same non-empty shape (any, typically (T, Y, X)), any real dtype.
    low, high
        Percentiles, ``0 <= low < high <= 100``; CIDC25 uses 3 and 97.

    Returns
    -------
    float
        ``+inf`` when ``x`` equals ``gt``.

    Raises
    ------
    ValueError
        If the percentiles are not ``0 <= low < high <= 100``.
    DataError
        On different shapes, empty arrays, NaN or Inf values, or ``R <= 0`` (PSNR undefined).
    """
    low, high = _check_percentiles(low, high)
    gt, x = _check_pair(gt, x, video=False)
    _, error = _total_sums(gt, x)  # also rejects NaN/Inf before they reach the percentiles
    return _psnr_from(error, gt.size, _percentile_range(gt, low, high))


def evaluate_video(gt: ArrayLike, x: ArrayLike, alpha: float = DEFAULT_ALPHA) -> dict[str, float]:
    """All CIDC25 temporal metrics of one (T, Y, X) video, from one pass over the data.

    Parameters
    ----------
    gt, x
        Ground truth and prediction, (T, Y, X), same shape, any real dtype (computed in float64).
    alpha
        Weight of the spatial SNR in stSNR, in [0, 1] (official value unknown, see :data:`DEFAULT_ALPHA`).

    Returns
    -------
    dict
        ``{"stsnr", "spatial_snr", "temporal_snr", "psnr_p3_p97", "alpha"}``, all floats, as
        :func:`stsnr`, :func:`spatial_snr`, :func:`temporal_snr` and :func:`percentile_range_psnr`
        (3rd and 97th percentiles) compute them, and the ``alpha`` used.

    Raises
    ------
    ValueError
        If ``alpha`` is outside [0, 1].
    DataError
        If the input is not 3D (the message names the shape), and as the individual metrics.
    """
    alpha = _check_alpha(alpha)
    gt, x = _check_pair(gt, x, video=True)
    sums = _video_sums(gt, x)
    spatial, temporal = _spatial(sums), _temporal(sums)
    error = float(sums.frame_error.sum())
    return {
        "stsnr": alpha * spatial + (1.0 - alpha) * temporal,
        "spatial_snr": spatial,
        "temporal_snr": temporal,
        "psnr_p3_p97": _psnr_from(error, gt.size, _percentile_range(gt, PERCENTILE_LOW, PERCENTILE_HIGH)),
        "alpha": alpha,
    }
