"""Classical restoration baselines that the learned models are compared against.

A learned deconvolution is only worth its training if it beats the classical method at its
best. :func:`richardson_lucy` is the standard iterative maximum-likelihood deconvolution for
Poisson data (the same update as :func:`skimage.restoration.richardson_lucy`, without the
scikit-image dependency), and :func:`best_richardson_lucy` picks its number of iterations
against a reference, the way benchmarks report the best Gaussian filter for denoising.

Only numpy and scipy are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
from scipy.signal import fftconvolve

__all__ = ["best_richardson_lucy", "richardson_lucy"]


def _check_psf(psf: np.ndarray, image_ndim: int) -> np.ndarray:
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim < 1 or psf.ndim > image_ndim:
        raise ValueError(f"PSF with {psf.ndim} dimensions does not fit an image with {image_ndim} dimensions")
    if not np.all(np.isfinite(psf)):
        raise ValueError("PSF contains NaN or infinite values")
    if float(psf.sum()) <= 0:
        raise ValueError(f"PSF sums to {float(psf.sum())!r}; it must sum to a positive value")
    return psf


def _check_iterations(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"iteration count {n!r} must be an integer >= 1")
    return int(n)


def _rl_iterates(image: np.ndarray, psf: np.ndarray, iterations: int, eps: float) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(k, estimate)`` after each Richardson-Lucy iteration ``k = 1..iterations``.

    The estimate (float64) is updated in place: copy it to keep it.
    """
    data = np.clip(np.asarray(image, dtype=np.float64), 0.0, None)
    kernel = _check_psf(psf, data.ndim)
    lead = data.ndim - kernel.ndim
    axes = tuple(range(lead, data.ndim))
    # Leading axes get a singleton PSF axis: each leading index is deconvolved independently.
    kernel = kernel.reshape((1,) * lead + kernel.shape)
    mirror = np.flip(kernel)
    estimate = np.full(data.shape, 0.5, dtype=np.float64)
    relative = np.zeros_like(data)
    for k in range(1, iterations + 1):
        conv = fftconvolve(estimate, kernel, mode="same", axes=axes)
        relative.fill(0.0)
        np.divide(data, conv, out=relative, where=conv >= eps)
        estimate *= fftconvolve(relative, mirror, mode="same", axes=axes)
        yield k, estimate


def richardson_lucy(image: np.ndarray, psf: np.ndarray, iterations: int = 30, *, eps: float = 1e-12) -> np.ndarray:
    """Richardson-Lucy deconvolution over the last ``psf.ndim`` axes.

    Starting from ``0.5`` everywhere, each iteration does::

        conv = fftconvolve(estimate, psf, "same")
        relative = image / conv            (0 where conv < eps)
        estimate *= fftconvolve(relative, psf[::-1, ::-1], "same")

    which is :func:`skimage.restoration.richardson_lucy` with ``clip=False`` and
    ``filter_epsilon=None``. The iteration count is the regularisation: more iterations
    sharpen more and amplify noise more.

    Parameters
    ----------
    image : numpy.ndarray
        Blurred image, 2D or 3D over the PSF's axes, optionally with leading axes (each leading
        index is deconvolved independently). RL assumes non-negative (photon-count-like) data:
        negative values, e.g. from an offset subtraction, are clipped to 0 first.
    psf : numpy.ndarray
        Point spread function, centred, with finite values and a positive sum. It should sum to
        1 (it is used as given, as in scikit-image; another sum scales the result).
    iterations : int
        Number of iterations, >= 1.
    eps : float
        Where the re-blurred estimate is below ``eps``, the ratio is set to 0 (no division by 0).

    Returns
    -------
    numpy.ndarray
        float32 estimate of ``image.shape``.

    Raises
    ------
    ValueError
        On a PSF with more dimensions than the image, NaN/infinite values or a non-positive
        sum, or ``iterations < 1``.
    """
    iterations = _check_iterations(iterations)
    steps = _rl_iterates(image, psf, iterations, eps)
    for k, estimate in steps:
        if k == iterations:
            return estimate.astype(np.float32)
    raise AssertionError("unreachable: the iterates stop at `iterations`")  # pragma: no cover


def best_richardson_lucy(
    image: np.ndarray,
    psf: np.ndarray,
    reference: np.ndarray,
    iterations: Sequence[int] | Iterable[int] = (5, 10, 20, 40, 80),
    *,
    metric: Callable[[np.ndarray, np.ndarray], float],
) -> tuple[np.ndarray, int]:
    """Richardson-Lucy at its best iteration count, judged against a reference.

    Runs :func:`richardson_lucy` once up to ``max(iterations)``, scores the estimate at each
    listed count with ``metric(reference, estimate)`` (higher is better), and returns the best.
    This gives the baseline its most favourable setting, as benchmarks report the best Gaussian
    filter; it needs the ground truth, so it is an upper bound of what RL achieves in practice.

    Parameters
    ----------
    image : numpy.ndarray
        Blurred image (see :func:`richardson_lucy`).
    psf : numpy.ndarray
        Point spread function.
    reference : numpy.ndarray
        Ground truth the estimates are scored against.
    iterations : sequence of int
        Candidate iteration counts, each >= 1.
    metric : callable
        ``metric(reference, estimate) -> float``, higher is better (e.g. PSNR or SSIM). The
        estimate passed is float32. NaN scores never win.

    Returns
    -------
    tuple of (numpy.ndarray, int)
        The best float32 estimate and its iteration count (the smallest count on a tie).

    Raises
    ------
    ValueError
        On an empty or invalid ``iterations``, or a bad PSF (see :func:`richardson_lucy`).
    """
    counts = sorted({_check_iterations(n) for n in iterations})
    if not counts:
        raise ValueError("best_richardson_lucy needs at least one iteration count")
    wanted = set(counts)
    best: tuple[np.ndarray, int] | None = None
    best_score = -math.inf
    for k, estimate in _rl_iterates(image, psf, counts[-1], 1e-12):
        if k not in wanted:
            continue
        candidate = estimate.astype(np.float32)
        score = float(metric(reference, candidate))
        if best is None or (not math.isnan(score) and score > best_score):
            best = (candidate, k)
            best_score = score if not math.isnan(score) else -math.inf
    assert best is not None
    return best
