"""Tests of the degradation model (computational microscope) against closed-form cases."""

from __future__ import annotations

import numpy as np
import pytest

from ai4life_kit.errors import UserInputError
from ai4life_kit.simulate.degrade import (
    Degradation,
    add_poisson_gaussian,
    bin_axes,
    blur,
    decimate,
    gaussian_kernel1d,
    gaussian_psf,
)


def _delta(shape: tuple[int, ...]) -> np.ndarray:
    image = np.zeros(shape, dtype=np.float32)
    image[tuple(s // 2 for s in shape)] = 1.0
    return image


def _centre_crop(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    index = tuple(slice(n // 2 - s // 2, n // 2 - s // 2 + s) for n, s in zip(image.shape, shape, strict=True))
    return image[index]


# ---------------------------------------------------------------------------------------------
# kernels and PSFs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 3.3])
def test_kernel1d_normalised_symmetric_default_radius(sigma):
    kernel = gaussian_kernel1d(sigma)
    radius = int(np.ceil(4 * sigma))
    assert kernel.dtype == np.float64
    assert kernel.shape == (2 * radius + 1,)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(kernel, kernel[::-1])
    assert np.argmax(kernel) == radius


def test_kernel1d_variance_is_sigma_squared():
    sigma = 2.0
    kernel = gaussian_kernel1d(sigma)
    x = np.arange(kernel.size) - kernel.size // 2
    assert float(np.sum(kernel * x**2)) == pytest.approx(sigma**2, rel=1e-3)


def test_kernel1d_zero_sigma_and_explicit_radius():
    np.testing.assert_array_equal(gaussian_kernel1d(0.0), [1.0])
    assert gaussian_kernel1d(0.1).shape == (3,)  # radius at least 1
    kernel = gaussian_kernel1d(1.0, radius=2)
    assert kernel.shape == (5,)
    assert kernel.sum() == pytest.approx(1.0)


def test_gaussian_psf_shape_centre_and_separability():
    psf = gaussian_psf((2.0, 1.0, 0.5))
    assert psf.dtype == np.float64
    assert psf.shape == (17, 9, 5)
    assert psf.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.unravel_index(np.argmax(psf), psf.shape) == (8, 4, 2)
    expected = np.einsum("i,j,k->ijk", gaussian_kernel1d(2.0), gaussian_kernel1d(1.0), gaussian_kernel1d(0.5))
    np.testing.assert_allclose(psf, expected, rtol=1e-12)
    assert gaussian_psf((1.0, 1.0), shape=(5, 7)).shape == (5, 7)


# ---------------------------------------------------------------------------------------------
# blur
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "sigmas"), [((41, 45), (1.5, 2.0)), ((25, 31, 29), (2.0, 1.0, 1.2))])
def test_blur_of_delta_is_the_psf(shape, sigmas):
    out = blur(_delta(shape), sigmas)
    assert out.dtype == np.float32
    assert out.shape == shape
    psf = gaussian_psf(sigmas)
    np.testing.assert_allclose(_centre_crop(out, psf.shape), psf, atol=1e-6)
    # nothing outside the PSF's support
    assert out.sum() == pytest.approx(1.0, abs=1e-5)


def test_blur_preserves_sum_away_from_borders():
    rng = np.random.default_rng(1)
    image = np.zeros((64, 64), dtype=np.float32)
    image[20:44, 20:44] = rng.uniform(0, 10, size=(24, 24))
    out = blur(image, 2.0)
    assert out.sum() == pytest.approx(image.sum(), rel=1e-5)
    assert out.max() < image.max()


def test_blur_with_psf_equals_blur_with_sigmas_in_interior():
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 100, size=(6, 48, 52)).astype(np.float32)
    sigmas = (1.3, 2.1)
    by_sigma = blur(image, sigmas)
    by_psf = blur(image, psf=gaussian_psf(sigmas))
    assert by_psf.shape == image.shape
    assert by_psf.dtype == np.float32
    inner = (slice(None), slice(10, -10), slice(10, -10))
    np.testing.assert_allclose(by_psf[inner], by_sigma[inner], rtol=1e-4)
    # The same reflect border handling: close everywhere, not just in the interior.
    np.testing.assert_allclose(by_psf, by_sigma, rtol=1e-3)
    # Leading axis independent: each plane as if blurred alone.
    np.testing.assert_allclose(by_psf[3], blur(image[3], psf=gaussian_psf(sigmas)), rtol=1e-5)


def test_blur_psf_is_normalised():
    image = _delta((21, 21))
    psf = gaussian_psf((1.0, 1.0))
    np.testing.assert_allclose(blur(image, psf=5.0 * psf), blur(image, psf=psf), atol=1e-7)


def test_anisotropic_blur_only_touches_chosen_axes():
    # A line along x (constant in x): blurring x alone leaves it unchanged, blurring y spreads it.
    image = np.zeros((9, 33, 35), dtype=np.float32)
    image[4, 16, :] = 1.0
    only_x = blur(image, 2.0, axes=(2,))
    np.testing.assert_allclose(only_x, image, atol=1e-6)
    only_y = blur(image, (3.0,), axes=(1,))
    np.testing.assert_array_equal(only_y[[3, 5]], 0)  # z untouched
    assert only_y[4, 16, 0] < 0.2
    np.testing.assert_allclose(only_y[4, :, 10], np.pad(gaussian_kernel1d(3.0), 4), atol=1e-6)
    # scalar sigma: the last two axes
    yx = blur(image, 1.0)
    np.testing.assert_array_equal(yx[[0, 3, 5, 8]], 0)


# ---------------------------------------------------------------------------------------------
# subsampling
# ---------------------------------------------------------------------------------------------
def test_bin_axes_known_block_means():
    image = np.arange(24, dtype=np.float64).reshape(4, 6)
    out = bin_axes(image, 2, axes=(0, 1))
    expected = np.array([[3.5, 5.5, 7.5], [15.5, 17.5, 19.5]])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(bin_axes(image, 2, axes=(1,)), image.reshape(4, 3, 2).mean(axis=2))


def test_bin_axes_crops_remainder_and_keeps_mean():
    image = np.arange(35, dtype=np.float32).reshape(5, 7)
    out = bin_axes(image, 2, axes=(-2, -1))
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, bin_axes(image[:4, :6], 2, axes=(0, 1)))
    constant = np.full((3, 10, 11), 7.25, dtype=np.float32)
    binned = bin_axes(constant, 3, axes=(1, 2))
    assert binned.shape == (3, 3, 3)
    np.testing.assert_array_equal(binned, 7.25)


def test_decimate_picks_planes():
    image = np.arange(7 * 3 * 2).reshape(7, 3, 2)
    out = decimate(image, 3, axis=0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image[[0, 3, 6]])
    out[:] = -1  # a copy
    assert image.min() == 0
    np.testing.assert_array_equal(decimate(image, 2, axis=-1), image[:, :, [0]])


# ---------------------------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("peak", "read_noise"), [(20.0, 0.0), (5.0, 2.0)])
def test_poisson_gaussian_statistics_on_constant_image(peak, read_noise):
    value = 300.0
    image = np.full((400, 500), value, dtype=np.float32)
    noisy = add_poisson_gaussian(image, peak, read_noise, np.random.default_rng(3))
    assert noisy.dtype == np.float32
    assert noisy.shape == image.shape
    expected_var = (value / peak) ** 2 * (peak + read_noise**2)
    standard_error = np.sqrt(expected_var / noisy.size)
    assert abs(noisy.mean(dtype=np.float64) - value) < 4 * standard_error
    assert noisy.var(dtype=np.float64) == pytest.approx(expected_var, rel=0.05)


def test_poisson_gaussian_reference_seed_and_clipping():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 50, size=(64, 64)).astype(np.float32)
    a = add_poisson_gaussian(image, 10.0, 1.0, np.random.default_rng(7))
    b = add_poisson_gaussian(image, 10.0, 1.0, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, add_poisson_gaussian(image, 10.0, 1.0, np.random.default_rng(8)))
    # An explicit reference sets the photon scale: photons = image * peak / reference, integers.
    counts = add_poisson_gaussian(image, 4.0, 0.0, np.random.default_rng(1), reference=2.0) * (4.0 / 2.0)
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-3)
    # Negative values are clipped to 0 photons: without read noise they come back as exactly 0.
    negative = np.full((8, 8), -5.0, dtype=np.float32)
    negative[0, 0] = 10.0
    out = add_poisson_gaussian(negative, 100.0, 0.0, np.random.default_rng(2), reference=10.0)
    assert (out[1:] == 0).all()


# ---------------------------------------------------------------------------------------------
# the whole microscope
# ---------------------------------------------------------------------------------------------
def test_degradation_order_blur_then_bin_then_noise():
    image = np.zeros((32, 32), dtype=np.float32)
    image[15, 16] = 1000.0
    model = Degradation(psf_sigma=(1.5, 1.5), blur_axes=(0, 1), factor=2, subsample_axes=(0, 1))
    out = model.apply(image, np.random.default_rng(0))
    assert out.dtype == np.float32
    assert out.shape == (16, 16)
    expected = bin_axes(blur(image, (1.5, 1.5), axes=(0, 1)), 2, (0, 1))
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    # The other order spreads the delta differently: the check above can fail.
    wrong = blur(bin_axes(image, 2, (0, 1)), (1.5, 1.5), axes=(0, 1))
    assert np.abs(out - wrong).max() > 1.0
    # Noise last, on the blurred and binned image, with the same generator.
    noisy_model = Degradation(
        psf_sigma=(1.5, 1.5), blur_axes=(0, 1), factor=2, subsample_axes=(0, 1), peak=30.0, read_noise=1.0
    )
    noisy = noisy_model.apply(image, np.random.default_rng(5))
    np.testing.assert_array_equal(noisy, add_poisson_gaussian(expected, 30.0, 1.0, np.random.default_rng(5)))


def test_degradation_decimate_axial_and_identity():
    rng = np.random.default_rng(4)
    stack = rng.uniform(0, 1, size=(12, 16, 16)).astype(np.float32)
    model = Degradation(psf_sigma=(3.0,), blur_axes=(0,), factor=4, subsample_axes=(0,), mode="decimate")
    out = model.apply(stack, rng)
    assert out.shape == (3, 16, 16)
    np.testing.assert_allclose(out, blur(stack, (3.0,), axes=(0,))[[0, 4, 8]], rtol=1e-6)
    two_axes = Degradation(factor=2, subsample_axes=(1, 2), mode="decimate").apply(stack, rng)
    np.testing.assert_array_equal(two_axes, stack[:, ::2, ::2])
    identity = Degradation().apply(stack.astype(np.float64), rng)
    assert identity.dtype == np.float32
    np.testing.assert_array_equal(identity, stack)


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: gaussian_kernel1d(-1.0), "-1.0"),
        (lambda: gaussian_psf((1.0, 1.0), shape=(5, 4)), r"side 4"),
        (lambda: gaussian_psf((1.0, -0.5)), "-0.5"),
        (lambda: blur(np.zeros((8, 8))), "exactly one"),
        (lambda: blur(np.zeros((8, 8)), 1.0, psf=np.ones((3, 3))), "exactly one"),
        (lambda: blur(np.zeros((8, 8)), -2.0), "-2.0"),
        (lambda: blur(np.zeros((8, 8)), (1.0, 1.0), axes=(0,)), "axes"),
        (lambda: blur(np.zeros((8, 8)), 1.0, axes=(5,)), "axis 5"),
        (lambda: blur(np.zeros((8, 8)), psf=np.full((3, 3), np.nan)), "NaN"),
        (lambda: blur(np.zeros((8, 8)), psf=-np.ones((3, 3))), r"-9\.0"),
        (lambda: blur(np.zeros((8, 8)), psf=np.ones((3, 4))), r"\(3, 4\)"),
        (lambda: bin_axes(np.zeros((8, 8)), 0, (0,)), "factor 0"),
        (lambda: bin_axes(np.zeros((3, 8)), 4, (0,)), "length 3"),
        (lambda: decimate(np.zeros((8, 8)), 0, 0), "factor 0"),
        (lambda: add_poisson_gaussian(np.ones((4, 4)), 0.0, 1.0, np.random.default_rng()), "peak 0.0"),
        (lambda: add_poisson_gaussian(np.ones((4, 4)), 10.0, -1.0, np.random.default_rng()), "read_noise -1.0"),
        (lambda: add_poisson_gaussian(np.zeros((4, 4)), 10.0, 1.0, np.random.default_rng()), "99.9th percentile"),
        (lambda: add_poisson_gaussian(np.ones((4, 4)), 10.0, 1.0, np.random.default_rng(), reference=-3.0), "-3.0"),
        (lambda: Degradation(psf_sigma=(1.0, 2.0), blur_axes=(0,)), r"\(1\.0, 2\.0\)"),
        (lambda: Degradation(factor=0, subsample_axes=(0,)), "factor 0"),
        (lambda: Degradation(factor=2), "subsample_axes"),
        (lambda: Degradation(mode="nearest"), "'nearest'"),  # type: ignore[arg-type]
        (lambda: Degradation(peak=-1.0), "peak -1.0"),
        (lambda: Degradation(read_noise=-0.5), "read_noise -0.5"),
    ],
)
def test_bad_arguments_raise_user_input_error(call, match):
    with pytest.raises(UserInputError, match=match):
        call()
