"""Metrics must equal what the challenge computes: scikit-image's PSNR/SSIM, CAREamics' SI-PSNR."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ai4life_kit.errors import DataError
from ai4life_kit.metrics import (
    MS_SSIM_WEIGHTS,
    evaluate_image,
    evaluate_pair,
    ms_ssim,
    psnr,
    scale_invariant_psnr,
    ssim,
)
from ai4life_kit.simulate import add_noise, simulate_ground_truth


def _pair(shape: tuple[int, ...], dtype=np.float32, seed: int = 0, peak: float = 20.0):
    """A fluorescence-like ground truth (with camera offset) and a noisy version of it."""
    rng = np.random.default_rng(seed)
    lam = simulate_ground_truth(shape, rng, peak=peak)
    noisy = add_noise(lam, rng, read_noise=2.0)
    return (lam + 100).astype(dtype), noisy.astype(dtype)


def _smooth(x: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.gaussian_filter(x, 1.0)


CASES = [
    pytest.param((64, 80), np.float32, id="2d-float32"),
    pytest.param((64, 80), np.float64, id="2d-float64"),
    pytest.param((12, 40, 48), np.float32, id="3d-float32"),
    pytest.param((12, 40, 48), np.float64, id="3d-float64"),
]


# ---------------------------------------------------------------------------------------------
# PSNR and SSIM equal scikit-image
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "dtype"), CASES)
def test_psnr_equals_skimage_with_gt_range(shape, dtype):
    gt, noisy = _pair(shape, dtype)
    for pred in (noisy, _smooth(noisy)):
        expected = peak_signal_noise_ratio(gt, pred, data_range=gt.max() - gt.min())
        assert psnr(gt, pred) == pytest.approx(expected, abs=1e-6)
        assert psnr(gt, pred, data_range=255) == pytest.approx(
            peak_signal_noise_ratio(gt, pred, data_range=255), abs=1e-6
        )


def test_psnr_mixed_dtypes_equal_skimage():
    gt, noisy = _pair((48, 48), np.float32)
    gt16 = np.rint(gt).astype(np.uint16)
    expected = peak_signal_noise_ratio(gt16, noisy, data_range=gt16.max() - gt16.min())
    assert psnr(gt16, noisy) == pytest.approx(expected, abs=1e-6)


def test_psnr_hand_value_and_identical_images():
    gt = np.array([[0.0, 10.0], [5.0, 5.0]])
    pred = gt + np.array([[1.0, -1.0], [1.0, -1.0]])  # MSE 1, range 10 -> 20 dB
    assert psnr(gt, pred) == pytest.approx(20.0)
    assert psnr(gt, gt) == math.inf


@pytest.mark.parametrize(("shape", "dtype"), CASES)
def test_ssim_equals_skimage_defaults(shape, dtype):
    gt, noisy = _pair(shape, dtype)
    for pred in (noisy, _smooth(noisy), gt):
        expected = structural_similarity(gt, pred, data_range=gt.max() - gt.min())
        assert ssim(gt, pred) == pytest.approx(expected, abs=1e-6)


def test_ssim_uint16_gt_equals_skimage():
    gt, noisy = _pair((40, 40), np.float64)
    gt16, noisy16 = np.rint(gt).astype(np.uint16), noisy.astype(np.uint16)
    expected = structural_similarity(gt16, noisy16, data_range=gt16.max() - gt16.min())
    assert ssim(gt16, noisy16) == pytest.approx(expected, abs=1e-6)


def test_ssim_improves_when_noise_is_removed():
    gt, noisy = _pair((96, 96), np.float64)
    assert ssim(gt, gt) == pytest.approx(1.0)
    assert ssim(gt, _smooth(noisy)) > ssim(gt, noisy)


# ---------------------------------------------------------------------------------------------
# scale-invariant PSNR (CAREamics)
# ---------------------------------------------------------------------------------------------
def _careamics_si_psnr(gt: np.ndarray, pred: np.ndarray) -> float:
    """CAREamics' recipe, written out with scikit-image's PSNR (the reference implementation)."""
    std = np.std(gt)
    data_range = (np.max(gt) - np.min(gt)) / std
    g = (gt - gt.mean()) / std
    g = g - g.mean()
    p = pred - pred.mean()
    p = p * (g * p).sum() / (p * p).sum()
    return peak_signal_noise_ratio(g, p, data_range=data_range)


def test_si_psnr_hand_computed_value():
    gt = np.array([[0.0, 1.0], [2.0, 3.0]])
    pred = np.array([[0.0, 1.0], [3.0, 2.0]])
    # std(gt) = sqrt(1.25): range**2 = 9 / 1.25 = 7.2; correlation r = 4 / 5, so the
    # residual variance of the standardised gt is 1 - r**2 = 0.36 -> 10 log10(20) dB.
    assert scale_invariant_psnr(gt, pred) == pytest.approx(10 * math.log10(20.0), abs=1e-9)


@pytest.mark.parametrize(("shape", "dtype"), [CASES[1], CASES[3]])
def test_si_psnr_equals_careamics_recipe(shape, dtype):
    gt, noisy = _pair(shape, dtype)
    for pred in (noisy, _smooth(noisy)):
        assert scale_invariant_psnr(gt, pred) == pytest.approx(_careamics_si_psnr(gt, pred), abs=1e-6)


def test_si_psnr_is_invariant_to_affine_rescaling_of_the_prediction():
    gt, noisy = _pair((64, 64), np.float64)
    pred = _smooth(noisy)
    ref = scale_invariant_psnr(gt, pred)
    for a, b in ((2.0, 0.0), (0.01, -50.0), (1000.0, 3e4), (1.0, -100.0)):
        assert scale_invariant_psnr(gt, a * pred + b) == pytest.approx(ref, abs=1e-6)
    # ... while plain PSNR is not: rescaled intensities are punished.
    assert psnr(gt, 0.5 * pred) < psnr(gt, pred) - 10


def test_si_psnr_formula_with_correlation_and_constant_prediction():
    gt, noisy = _pair((64, 64), np.float64)
    r = np.corrcoef(gt.ravel(), noisy.ravel())[0, 1]
    rng = (gt.max() - gt.min()) / gt.std()
    assert scale_invariant_psnr(gt, noisy) == pytest.approx(10 * np.log10(rng**2 / (1 - r**2)), abs=1e-9)
    # A constant prediction explains nothing: the residual is the whole (unit) variance.
    assert scale_invariant_psnr(gt, np.full_like(gt, 7.0)) == pytest.approx(20 * np.log10(rng), abs=1e-9)


# ---------------------------------------------------------------------------------------------
# MS-SSIM
# ---------------------------------------------------------------------------------------------
def test_ms_ssim_identical_is_one_and_decreases_with_noise():
    rng = np.random.default_rng(0)
    gt = simulate_ground_truth((192, 192), rng, peak=50.0).astype(np.float64)
    values = [ms_ssim(gt, gt + rng.normal(0, s, gt.shape)) for s in (0.0, 0.5, 2.0, 8.0)]
    assert values[0] == pytest.approx(1.0, abs=1e-12)
    assert all(a > b for a, b in itertools.pairwise(values))
    assert 0 <= values[-1] < 0.9


def test_ms_ssim_single_scale_equals_wang_ssim():
    # 16 px: only the first scale fits the 11-pixel window, so MS-SSIM is SSIM with a
    # Gaussian window (sigma 1.5) and population covariance, i.e. Wang et al.'s SSIM.
    gt, noisy = _pair((16, 20), np.float64)
    expected = structural_similarity(
        gt,
        noisy,
        data_range=gt.max() - gt.min(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ms_ssim(gt, noisy) == pytest.approx(expected, abs=1e-9)


def _reference_ms_ssim(x: np.ndarray, y: np.ndarray, n_scales: int) -> float:
    """Independent MS-SSIM: explicit 11x11 Gaussian, 'valid' 2D convolution, reshape pooling."""
    from scipy.signal import convolve2d

    t = np.arange(-5, 6)
    g = np.exp(-(t**2) / (2 * 1.5**2))
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * np.ptp(x)) ** 2, (0.03 * np.ptp(x)) ** 2
    w = np.array(MS_SSIM_WEIGHTS[:n_scales]) / sum(MS_SSIM_WEIGHTS[:n_scales])
    out = 1.0
    for j in range(n_scales):
        f = lambda a: convolve2d(a, kernel, mode="valid")  # noqa: E731
        mx, my = f(x), f(y)
        vx, vy, vxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
        cs = (2 * vxy + c2) / (vx + vy + c2)
        lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
        out *= (np.mean(lum * cs) if j == n_scales - 1 else np.mean(cs)) ** w[j]
        h, wd = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
        x = x[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean(axis=(1, 3))
        y = y[:h, :wd].reshape(h // 2, 2, wd // 2, 2).mean(axis=(1, 3))
    return float(out)


@pytest.mark.parametrize(("shape", "n_scales"), [((200, 190), 5), ((45, 60), 3), ((23, 30), 2)])
def test_ms_ssim_equals_reference_and_drops_scales_smaller_than_the_window(shape, n_scales):
    # (45, 60): scales of 45, 22 and 11 px fit the 11-px window, 5 px does not -> 3 scales.
    gt, noisy = _pair(shape, np.float64)
    pred = _smooth(noisy)
    assert ms_ssim(gt, pred) == pytest.approx(_reference_ms_ssim(gt, pred, n_scales), abs=1e-9)
    # With five scales the renormalisation is a no-op; dropping one changes the value.
    if n_scales < 5:
        assert ms_ssim(gt, pred) != pytest.approx(_reference_ms_ssim(gt, pred, n_scales - 1), abs=1e-4)
    assert ms_ssim(gt[:11, :11], gt[:11, :11]) == pytest.approx(1.0)


def test_ms_ssim_too_small_image_raises_naming_the_shape():
    gt = np.arange(100.0).reshape(10, 10)
    with pytest.raises(DataError, match=r"\(10, 10\)"):
        ms_ssim(gt, gt)


def test_ms_ssim_3d_is_mean_over_slices_with_volume_range():
    gt, noisy = _pair((3, 48, 48), np.float64)
    data_range = gt.max() - gt.min()
    per_slice = [ms_ssim(g, p, data_range=data_range) for g, p in zip(gt, noisy, strict=True)]
    assert ms_ssim(gt, noisy) == pytest.approx(np.mean(per_slice), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# errors and multi-channel helpers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [psnr, scale_invariant_psnr, ssim, ms_ssim])
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(DataError, match=r"\(32, 33\).*\(32, 32\)"):
        fn(np.zeros((32, 32)), np.zeros((32, 33)))


@pytest.mark.parametrize("fn", [psnr, scale_invariant_psnr, ssim, ms_ssim])
def test_constant_ground_truth_is_rejected(fn):
    with pytest.raises(DataError, match="constant"):
        fn(np.ones((32, 32)), np.zeros((32, 32)))


def test_ssim_too_small_image_suggests_sample_axes():
    with pytest.raises(DataError, match=r"\(3, 32, 32\).*S instead of Z"):
        ssim(np.random.default_rng(0).random((3, 32, 32)), np.zeros((3, 32, 32)))


def test_evaluate_pair_per_channel_and_mean():
    g0, p0 = _pair((48, 48), np.float64, seed=0)
    g1, p1 = _pair((48, 48), np.float64, seed=1, peak=100.0)
    gt, pred = np.stack([g0, g1], axis=-1), np.stack([p0, p1], axis=-1)
    res = evaluate_pair(gt, pred, channel_axis=-1)
    assert len(res["channels"]) == 2
    for ch, (g, p) in enumerate(((g0, p0), (g1, p1))):
        assert res["channels"][ch]["psnr"] == pytest.approx(psnr(g, p))
        assert res["channels"][ch]["si_psnr"] == pytest.approx(scale_invariant_psnr(g, p))
        assert res["channels"][ch]["ssim"] == pytest.approx(ssim(g, p))
        assert res["channels"][ch]["ms_ssim"] == pytest.approx(ms_ssim(g, p))
    assert res["mean"]["psnr"] == pytest.approx((res["channels"][0]["psnr"] + res["channels"][1]["psnr"]) / 2)
    single = evaluate_pair(g0, p0)
    assert len(single["channels"]) == 1 and single["mean"] == single["channels"][0]


def test_evaluate_pair_promotes_float32_to_float64():
    gt, noisy = _pair((64, 64), np.float32)
    res = evaluate_pair(gt, noisy)
    g64, n64 = gt.astype(np.float64), noisy.astype(np.float64)
    assert res["mean"]["ssim"] == pytest.approx(structural_similarity(g64, n64, data_range=np.ptp(g64)), abs=1e-12)


def test_evaluate_pair_rejects_nan():
    gt, noisy = _pair((32, 32), np.float64)
    noisy[3, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        evaluate_pair(gt, noisy)


def test_evaluate_image_axes_samples_and_channels():
    pairs = [_pair((32, 40), np.float64, seed=s) for s in range(4)]
    # S=2, C=2 in the order C,S,Y,X to check the transposition.
    gt = np.stack([np.stack([pairs[0][0], pairs[1][0]]), np.stack([pairs[2][0], pairs[3][0]])])
    pred = np.stack([np.stack([pairs[0][1], pairs[1][1]]), np.stack([pairs[2][1], pairs[3][1]])])
    res = evaluate_image(gt, pred, "CSYX")
    assert res["n_samples"] == 2
    assert len(res["channels"]) == 2
    ch1_psnr = np.mean([psnr(*pairs[2]), psnr(*pairs[3])])
    assert res["channels"][1]["psnr"] == pytest.approx(ch1_psnr)
    # Z stays spatial: a ZYX volume gets 3D SSIM.
    g3, p3 = _pair((8, 32, 32), np.float64)
    assert evaluate_image(g3, p3, "ZYX")["mean"]["ssim"] == pytest.approx(ssim(g3, p3))


def test_evaluate_image_rejects_bad_axes():
    with pytest.raises(DataError, match="axes"):
        evaluate_image(np.zeros((2, 32, 32)), np.zeros((2, 32, 32)), "YX")
