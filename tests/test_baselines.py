"""Tests of the classical restoration baselines (Richardson-Lucy deconvolution)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import fftconvolve

from ai4life_kit.baselines import best_richardson_lucy, richardson_lucy


def _gaussian_psf(sigma: float, ndim: int) -> np.ndarray:
    radius = int(np.ceil(4 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    psf = k
    for _ in range(ndim - 1):
        psf = np.multiply.outer(psf, k)
    return psf / psf.sum()


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def _neg_mse(reference: np.ndarray, estimate: np.ndarray) -> float:
    return -_mse(reference, estimate)


def _noisy_blurred_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A smooth positive truth, blurred and with Poisson noise: RL first improves, then overfits."""
    rng = np.random.default_rng(seed)
    points = np.zeros((64, 64))
    points[tuple(rng.integers(4, 60, size=(2, 40)))] = rng.uniform(50, 200, size=40)
    truth = fftconvolve(points, _gaussian_psf(1.5, 2), mode="same") + 2.0
    psf = _gaussian_psf(2.0, 2)
    blurred = fftconvolve(truth, psf, mode="same")
    photons_per_unit = 0.5
    noisy = rng.poisson(np.clip(blurred, 0, None) * photons_per_unit) / photons_per_unit
    return truth, noisy, psf


# ---------------------------------------------------------------------------------------------
# richardson_lucy
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "psf_ndim", "iterations"), [((40, 36), 2, 15), ((12, 20, 18), 3, 8)])
def test_richardson_lucy_matches_skimage(shape, psf_ndim, iterations):
    restoration = pytest.importorskip("skimage.restoration")
    rng = np.random.default_rng(0)
    image = rng.uniform(0.1, 1.0, size=shape)
    psf = _gaussian_psf(1.2, psf_ndim)
    ours = richardson_lucy(image, psf, iterations)
    theirs = restoration.richardson_lucy(image, psf, num_iter=iterations, clip=False)
    assert ours.dtype == np.float32
    assert ours.shape == shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    # the check can fail: one iteration more differs
    assert not np.allclose(richardson_lucy(image, psf, iterations + 1), theirs, rtol=1e-4)


def test_richardson_lucy_leading_axes_are_independent():
    rng = np.random.default_rng(1)
    stack = rng.uniform(0.1, 1.0, size=(2, 3, 24, 28))
    psf = _gaussian_psf(1.0, 2)
    out = richardson_lucy(stack, psf, 10)
    assert out.shape == stack.shape
    for index in np.ndindex(stack.shape[:2]):
        np.testing.assert_allclose(out[index], richardson_lucy(stack[index], psf, 10), rtol=1e-5)


def test_richardson_lucy_clips_negative_input():
    rng = np.random.default_rng(2)
    image = rng.uniform(-0.5, 1.0, size=(24, 24))
    psf = _gaussian_psf(1.0, 2)
    out = richardson_lucy(image, psf, 5)
    np.testing.assert_array_equal(out, richardson_lucy(np.clip(image, 0, None), psf, 5))
    assert (out >= 0).all()


def test_richardson_lucy_sharpens_point_sources():
    rng = np.random.default_rng(3)
    truth = np.zeros((64, 64))
    truth[tuple(rng.integers(12, 52, size=(2, 6)))] = 100.0
    psf = _gaussian_psf(1.5, 2)
    blurred = fftconvolve(truth, psf, mode="same")
    restored = richardson_lucy(blurred, psf, 50)
    assert _mse(restored, truth) <= 0.5 * _mse(blurred, truth)
    # flux is conserved (PSF sums to 1, sources far from the borders)
    assert restored.sum() == pytest.approx(truth.sum(), rel=1e-3)


def test_richardson_lucy_bad_arguments():
    image = np.ones((16, 16))
    with pytest.raises(ValueError, match="NaN"):
        richardson_lucy(image, np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="sums to"):
        richardson_lucy(image, -np.ones((3, 3)))
    with pytest.raises(ValueError, match="3 dimensions"):
        richardson_lucy(image, np.ones((3, 3, 3)))
    with pytest.raises(ValueError, match="iteration count 0"):
        richardson_lucy(image, np.ones((3, 3)), 0)


# ---------------------------------------------------------------------------------------------
# best_richardson_lucy
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("iterations", [(1, 2, 5, 10, 20, 40), (40, 2, 12, 4)])
def test_best_richardson_lucy_matches_direct_loop(iterations):
    truth, noisy, psf = _noisy_blurred_scene()
    best, n = best_richardson_lucy(noisy, psf, truth, iterations, metric=_neg_mse)
    scores = {k: _neg_mse(truth, richardson_lucy(noisy, psf, k)) for k in iterations}
    expected = max(scores, key=lambda k: scores[k])
    assert n == expected
    assert best.dtype == np.float32
    np.testing.assert_allclose(best, richardson_lucy(noisy, psf, expected), rtol=1e-5, atol=1e-5)
    # noise makes RL overfit: the best count is neither the first nor the last
    assert min(iterations) < n < max(iterations)


def test_best_richardson_lucy_default_counts_and_metric_direction():
    truth, noisy, psf = _noisy_blurred_scene(seed=1)
    _, n_min = best_richardson_lucy(noisy, psf, truth, metric=_neg_mse)
    assert n_min in (5, 10, 20, 40, 80)
    # a metric that rewards sharpening whatever the truth picks the largest count
    _, n_max = best_richardson_lucy(noisy, psf, truth, metric=lambda ref, est: float(est.max()))
    assert n_max == 80
    with pytest.raises(ValueError, match="at least one"):
        best_richardson_lucy(noisy, psf, truth, (), metric=_neg_mse)
