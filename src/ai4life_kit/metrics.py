"""Image-quality metrics as the AI4Life denoising challenge computes them.

- :func:`psnr`: scikit-image's ``peak_signal_noise_ratio`` with the data range of the ground
  truth (``gt.max() - gt.min()``).
- :func:`scale_invariant_psnr`: CAREamics' ``scale_invariant_psnr`` (``careamics/utils/metrics.py``):
  the ground truth is standardised, the prediction is zero-meaned and scaled by the least-squares
  factor onto it, and PSNR is taken with the standardised ground truth's range. It is therefore
  invariant to any affine rescaling ``a * pred + b`` with ``a > 0``.
- :func:`ssim`: scikit-image's ``structural_similarity`` with its defaults (7-pixel uniform window,
  sample covariance, K1 = 0.01, K2 = 0.03) and the data range of the ground truth; 2D or 3D.
- :func:`ms_ssim`: multi-scale SSIM (Wang, Simoncelli & Bovik 2003), see its docstring for the
  choices made where the standard leaves room.

:func:`psnr` and :func:`ssim` reproduce scikit-image step by step, including its choice of float
precision (float32 inputs are computed in float32), so they agree with it to rounding. The
helpers :func:`evaluate_pair` and :func:`evaluate_image` promote to float64 first, because
float32 variances of images with a large offset suffer from cancellation.

Only numpy and scipy are used: no scikit-image or torch at run time.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ai4life_kit.errors import DataError

__all__ = [
    "METRIC_NAMES",
    "MS_SSIM_WEIGHTS",
    "evaluate_image",
    "evaluate_pair",
    "ms_ssim",
    "psnr",
    "scale_invariant_psnr",
    "ssim",
]

METRIC_NAMES = ("psnr", "si_psnr", "ssim", "ms_ssim")
# Wang et al. 2003, the weights of the five scales, finest first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_SSIM_WIN = 7  # scikit-image's default uniform window
_MS_SSIM_SIGMA = 1.5
_MS_SSIM_TRUNCATE = 3.5  # 11-tap Gaussian, as in Wang et al.
_MS_SSIM_WIN = 2 * int(_MS_SSIM_TRUNCATE * _MS_SSIM_SIGMA + 0.5) + 1
_K1, _K2 = 0.01, 0.03


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _float_type(*dtypes: np.dtype) -> np.dtype:
    """scikit-image's ``_supported_float_type``: keep float32/64, float16 -> 32, rest -> 64."""

    def one(dt: np.dtype) -> type:
        dt = np.dtype(dt)
        if dt == np.float16 or dt == np.float32:
            return np.float32
        return np.float64

    return np.result_type(*(one(d) for d in dtypes))


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> None:
    if gt.shape != pred.shape:
        raise DataError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    if gt.size == 0:
        raise DataError(f"images of shape {gt.shape} are empty")


def _gt_range(gt: np.ndarray) -> Any:
    """``gt.max() - gt.min()`` as scikit-image users write it (integers widened: no overflow)."""
    if gt.dtype.kind in "ui":
        return int(gt.max()) - int(gt.min())
    return gt.max() - gt.min()


def _require_range(data_range: Any, what: str) -> None:
    if not float(data_range) > 0:
        raise DataError(f"{what}: the ground truth is constant (data range {float(data_range)}), so it is undefined")


# ---------------------------------------------------------------------------------------------
# PSNR
# ---------------------------------------------------------------------------------------------
def psnr(gt: np.ndarray, pred: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, as ``skimage.metrics.peak_signal_noise_ratio``.

    Parameters
    ----------
    gt, pred
        Ground truth and prediction, same shape, any dtype.
    data_range
        Defaults to the range of the ground truth, ``gt.max() - gt.min()`` (the challenge's
        choice), not the range of the dtype.

    Returns
    -------
    float
        ``10 log10(data_range**2 / MSE)``; ``inf`` for identical images.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    _check_pair(gt, pred)
    if data_range is None:
        data_range = _gt_range(gt)
    _require_range(data_range, "PSNR")
    ft = _float_type(gt.dtype, pred.dtype)
    err = np.mean((gt.astype(ft, copy=False) - pred.astype(ft, copy=False)) ** 2, dtype=np.float64)
    if err == 0:
        return math.inf
    return float(10 * np.log10(float(data_range) ** 2 / err))


def scale_invariant_psnr(gt: np.ndarray, pred: np.ndarray) -> float:
    """Scale-invariant PSNR in dB, as CAREamics computes it (computed here in float64).

    The ground truth is standardised, ``g = (gt - mean) / std``; the prediction is zero-meaned,
    ``p = pred - mean(pred)``, and scaled by the least-squares factor ``a = <g, p> / <p, p>``;
    the result is ``psnr(g, a * p, data_range=(gt.max() - gt.min()) / std(gt))``. This equals
    ``10 log10(range**2 / (1 - r**2))`` with ``r`` the Pearson correlation of gt and pred.
    A constant prediction gives ``a = 0`` (CAREamics would divide by zero).
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    _check_pair(gt, pred)
    std = float(gt.std())
    _require_range(std, "scale-invariant PSNR")
    data_range = (float(gt.max()) - float(gt.min())) / std
    g = (gt - gt.mean()) / std
    g -= g.mean()  # CAREamics zero-means again; a no-op up to rounding
    p = pred - pred.mean()
    pp = float(np.sum(p * p))
    scale = float(np.sum(g * p)) / pp if pp > 0 else 0.0
    return psnr(g, scale * p, data_range=data_range)


# ---------------------------------------------------------------------------------------------
# SSIM
# ---------------------------------------------------------------------------------------------
def ssim(gt: np.ndarray, pred: np.ndarray, data_range: float | None = None) -> float:
    """Mean structural similarity, as ``skimage.metrics.structural_similarity`` with defaults.

    7-pixel (7x7 or 7x7x7) uniform window, sample covariance (N / (N - 1)), K1 = 0.01,
    K2 = 0.03, a border of 3 pixels excluded from the mean, computed in ``gt``'s float
    precision. 2D images use a 2D window, 3D (Z,Y,X) volumes a 3D one.

    Parameters
    ----------
    gt, pred
        Ground truth and prediction, same shape; every side at least 7 pixels.
    data_range
        Defaults to ``gt.max() - gt.min()``.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    _check_pair(gt, pred)
    if min(gt.shape) < _SSIM_WIN:
        raise DataError(
            f"image of shape {gt.shape} is smaller than the {_SSIM_WIN}-pixel SSIM window along an axis"
            " (for a thin stack, pass axes with S instead of Z to score its slices as 2D images)"
        )
    if data_range is None:
        data_range = _gt_range(gt)
    _require_range(data_range, "SSIM")
    ft = _float_type(gt.dtype)
    x = gt.astype(ft, copy=False)
    y = pred.astype(ft, copy=False)
    n_win = _SSIM_WIN**gt.ndim
    cov_norm = n_win / (n_win - 1)

    ux = ndi.uniform_filter(x, size=_SSIM_WIN)
    uy = ndi.uniform_filter(y, size=_SSIM_WIN)
    uxx = ndi.uniform_filter(x * x, size=_SSIM_WIN)
    uyy = ndi.uniform_filter(y * y, size=_SSIM_WIN)
    uxy = ndi.uniform_filter(x * y, size=_SSIM_WIN)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)

    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (_SSIM_WIN - 1) // 2
    inner = s[tuple(slice(pad, n - pad) for n in s.shape)]
    return float(inner.mean(dtype=np.float64))


def _ssim_maps(x: np.ndarray, y: np.ndarray, c1: float, c2: float) -> tuple[float, float]:
    """Mean SSIM and mean contrast-structure term with an 11-tap Gaussian window, valid region."""

    def blur(a: np.ndarray) -> np.ndarray:
        return ndi.gaussian_filter(a, _MS_SSIM_SIGMA, truncate=_MS_SSIM_TRUNCATE, mode="reflect")

    ux, uy = blur(x), blur(y)
    # Population covariance, as in Wang et al.
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    cs = (2 * vxy + c2) / (vx + vy + c2)
    lum = (2 * ux * uy + c1) / (ux * ux + uy * uy + c1)
    # Only pixels whose whole window lies inside the image ("valid" convolution).
    pad = _MS_SSIM_WIN // 2
    inner = (slice(pad, -pad),) * x.ndim
    return float(np.mean(lum[inner] * cs[inner])), float(np.mean(cs[inner]))


def _downsample2(a: np.ndarray) -> np.ndarray:
    """2x2 average pooling; an odd last row/column is dropped (as ``avg_pool2d``)."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w]
    return 0.25 * (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2])


def _ms_ssim_2d(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    n_scales = 0
    while n_scales < len(MS_SSIM_WEIGHTS) and min(x.shape) // 2**n_scales >= _MS_SSIM_WIN:
        n_scales += 1
    if n_scales == 0:
        raise DataError(f"image of shape {x.shape} is smaller than the {_MS_SSIM_WIN}-pixel MS-SSIM window")
    weights = np.asarray(MS_SSIM_WEIGHTS[:n_scales])
    weights = weights / weights.sum()
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    value = 1.0
    for j in range(n_scales):
        full, cs = _ssim_maps(x, y, c1, c2)
        # Luminance enters only at the coarsest scale. Negative terms are clipped to 0 (as
        # pytorch-msssim does) because a fractional power of a negative number is undefined.
        term = full if j == n_scales - 1 else cs
        value *= max(term, 0.0) ** weights[j]
        if j < n_scales - 1:
            x, y = _downsample2(x), _downsample2(y)
    return float(value)


def ms_ssim(gt: np.ndarray, pred: np.ndarray, data_range: float | None = None) -> float:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003).

    Five scales with weights ``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)``, an 11-tap Gaussian
    window with sigma 1.5, population covariance, K1 = 0.01, K2 = 0.03, only pixels whose
    window lies inside the image, 2x2 average pooling between scales. Contrast-structure
    terms are used at every scale and the luminance term only at the coarsest.

    Choices where the standard leaves room, documented here because results depend on them:

    - **Small images**: scales at which the image would be smaller than the 11-pixel window are
      dropped and the remaining weights renormalised to sum to 1 (torchmetrics raises
      instead); an image smaller than 11 pixels raises :class:`DataError`.
    - **Negative terms** are clipped to 0 before the fractional power (as pytorch-msssim does).
    - **3D (Z,Y,X)**: the mean over z-slices of the 2D MS-SSIM, with the data range of the whole
      volume; this is how CAREamics treats stacks (the leading axis as a batch), and thin
      stacks cannot be downsampled five times along z.

    Parameters
    ----------
    gt, pred
        2D or 3D arrays of the same shape.
    data_range
        Defaults to ``gt.max() - gt.min()``.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    _check_pair(gt, pred)
    if gt.ndim not in (2, 3):
        raise DataError(f"MS-SSIM needs a 2D or 3D image, got shape {gt.shape}")
    if data_range is None:
        data_range = float(gt.max()) - float(gt.min())
    _require_range(data_range, "MS-SSIM")
    if gt.ndim == 2:
        return _ms_ssim_2d(gt, pred, float(data_range))
    return float(np.mean([_ms_ssim_2d(g, p, float(data_range)) for g, p in zip(gt, pred, strict=True)]))


# ---------------------------------------------------------------------------------------------
# whole images
# ---------------------------------------------------------------------------------------------
def _all_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    return {
        "psnr": psnr(gt, pred),
        "si_psnr": scale_invariant_psnr(gt, pred),
        "ssim": ssim(gt, pred),
        "ms_ssim": ms_ssim(gt, pred),
    }


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in METRIC_NAMES}


def _as_float64_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    _check_pair(gt, pred)
    for what, a in (("ground truth", gt), ("prediction", pred)):
        if not np.isfinite(a).all():
            raise DataError(f"{what} contains NaN or Inf pixels")
    return gt, pred


def evaluate_pair(gt: np.ndarray, pred: np.ndarray, channel_axis: int | None = None) -> dict[str, Any]:
    """All four metrics of a 2D or 3D image, per channel and averaged over channels.

    Parameters
    ----------
    gt, pred
        Same shape: spatial (Y,X) or (Z,Y,X), plus a channel axis if ``channel_axis`` is given.
    channel_axis
        Axis holding channels, each scored separately against the same-index gt channel.

    Returns
    -------
    dict
        ``{"channels": [{"psnr", "si_psnr", "ssim", "ms_ssim"}, ...], "mean": {...}}``.
    """
    gt, pred = _as_float64_pair(gt, pred)
    if channel_axis is None:
        gt, pred = gt[None], pred[None]
    else:
        gt, pred = np.moveaxis(gt, channel_axis, 0), np.moveaxis(pred, channel_axis, 0)
    rows = [_all_metrics(g, p) for g, p in zip(gt, pred, strict=True)]
    return {"channels": rows, "mean": _mean_metrics(rows)}


def evaluate_image(gt: np.ndarray, pred: np.ndarray, axes: str) -> dict[str, Any]:
    """All four metrics of an image with axes (``STCZYX`` letters), per channel and averaged.

    ``S`` and ``T`` index independent images: each is scored on its own and the values are
    averaged, per channel. ``Z`` stays a spatial axis (3D SSIM, slice-wise MS-SSIM).

    Returns
    -------
    dict
        ``{"channels": [...], "mean": {...}, "n_samples": int}``.
    """
    from ai4life_kit.data.axes import validate_axes

    gt, pred = _as_float64_pair(gt, pred)
    axes = validate_axes(axes, gt.ndim)
    batch = [a for a in axes if a in "ST"]
    spatial = [a for a in axes if a in "ZYX"]
    order = [*batch, *(["C"] if "C" in axes else []), *spatial]
    perm = [axes.index(a) for a in order]
    n_ch = gt.shape[axes.index("C")] if "C" in axes else 1
    space_shape = tuple(gt.shape[axes.index(a)] for a in spatial)
    gt = np.transpose(gt, perm).reshape((-1, n_ch, *space_shape))
    pred = np.transpose(pred, perm).reshape((-1, n_ch, *space_shape))
    rows = []
    for c in range(n_ch):
        per_sample = [_all_metrics(gt[s, c], pred[s, c]) for s in range(gt.shape[0])]
        rows.append(_mean_metrics(per_sample))
    return {"channels": rows, "mean": _mean_metrics(rows), "n_samples": int(gt.shape[0])}
