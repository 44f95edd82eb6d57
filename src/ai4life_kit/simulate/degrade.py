"""A computational microscope: degrade clean images into what an instrument would record.

Restoration beyond denoising (isotropic reconstruction, super-resolution, deconvolution) needs
pairs of a degraded input and a clean target, and such pairs can rarely be acquired. CARE
(Weigert et al., 2018, *Content-aware image restoration*) trains on *semi-synthetic* pairs
instead: clean or high-SNR data are degraded by a model of the microscope, and the network
learns to undo that model. This module is that model, in three independent steps:

1. **PSF blur** -- :func:`blur` with a separable Gaussian (:func:`gaussian_psf`) or any
   explicit PSF array;
2. **subsampling** -- :func:`bin_axes` (a camera with larger pixels integrates over them: area
   average) or :func:`decimate` (a z-stack with a larger step samples planes: no averaging);
3. **Poisson-Gaussian noise** -- :func:`add_poisson_gaussian` (shot noise on a chosen photon
   budget plus camera read noise).

:class:`Degradation` chains them in that physical order. Everything is numpy/scipy, returns
float32, and takes its randomness only from the ``numpy.random.Generator`` it is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from scipy import signal

from ai4life_kit.errors import UserInputError

__all__ = [
    "Degradation",
    "add_poisson_gaussian",
    "bin_axes",
    "blur",
    "decimate",
    "gaussian_kernel1d",
    "gaussian_psf",
]

_TRUNCATE = 4.0
_MODES = ("bin", "decimate")


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
def _check_sigma(sigma: float) -> float:
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        raise UserInputError(f"sigma {sigma!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise UserInputError(f"sigma {sigma!r} must be a finite number >= 0")
    return value


def _check_factor(factor: int) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise UserInputError(f"subsampling factor {factor!r} must be an integer >= 1")
    return int(factor)


def _normalize_axes(axes: Sequence[int], ndim: int) -> tuple[int, ...]:
    out = []
    for axis in axes:
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
            raise UserInputError(f"axis {axis!r} is out of range for an image with {ndim} dimensions")
        out.append(int(axis) % ndim)
    if len(set(out)) != len(out):
        raise UserInputError(f"axes {tuple(axes)!r} name the same axis twice")
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# PSF
# ---------------------------------------------------------------------------------------------
def gaussian_kernel1d(sigma: float, radius: int | None = None) -> np.ndarray:
    """Sampled, normalised 1D Gaussian.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels, >= 0. ``0`` gives the identity kernel.
    radius : int, optional
        Half-width: the kernel has ``2 * radius + 1`` taps. Default ``ceil(4 * sigma)``, at
        least 1 (``0`` when ``sigma == 0``).

    Returns
    -------
    numpy.ndarray
        float64 kernel that sums to 1, centred on index ``radius``.

    Raises
    ------
    UserInputError
        If ``sigma`` is negative or not finite, or ``radius`` is negative.
    """
    sigma = _check_sigma(sigma)
    if radius is None:
        radius = 0 if sigma == 0 else max(1, math.ceil(_TRUNCATE * sigma))
    elif isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise UserInputError(f"kernel radius {radius!r} must be an integer >= 0")
    radius = int(radius)
    if sigma == 0:
        kernel = np.zeros(2 * radius + 1)
        kernel[radius] = 1.0
        return kernel
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_psf(sigmas: Sequence[float], shape: Sequence[int] | None = None) -> np.ndarray:
    """Separable Gaussian PSF, one standard deviation per axis.

    Parameters
    ----------
    sigmas : sequence of float
        Standard deviation in pixels along each axis (>= 0), e.g. ``(sz, sy, sx)``.
    shape : sequence of int, optional
        Odd size per axis. Default ``2 * ceil(4 * sigma) + 1`` per axis (as in
        :func:`gaussian_kernel1d`).

    Returns
    -------
    numpy.ndarray
        float64 array of ``len(sigmas)`` dimensions, centred, summing to 1.

    Raises
    ------
    UserInputError
        On a negative sigma, a ``shape`` of the wrong length, or an even or non-positive side.
    """
    sigmas = tuple(_check_sigma(s) for s in sigmas)
    if not sigmas:
        raise UserInputError("gaussian_psf needs at least one sigma")
    if shape is None:
        radii: list[int | None] = [None] * len(sigmas)
    else:
        shape = tuple(shape)
        if len(shape) != len(sigmas):
            raise UserInputError(f"PSF shape {shape!r} has {len(shape)} entries for {len(sigmas)} sigmas")
        radii = []
        for side in shape:
            if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or side < 1 or side % 2 == 0:
                raise UserInputError(f"PSF side {side!r} in shape {shape!r} must be an odd positive integer")
            radii.append((int(side) - 1) // 2)
    psf = np.ones((1,) * len(sigmas))
    for axis, (sigma, radius) in enumerate(zip(sigmas, radii, strict=True)):
        kernel = gaussian_kernel1d(sigma, radius)
        psf = psf * kernel.reshape([-1 if a == axis else 1 for a in range(len(sigmas))])
    return psf / psf.sum()


# ---------------------------------------------------------------------------------------------
# degradation steps
# ---------------------------------------------------------------------------------------------
def _check_psf(psf: np.ndarray, image_ndim: int) -> np.ndarray:
    psf = np.asarray(psf, dtype=np.float64)
    if psf.ndim < 1 or psf.ndim > image_ndim:
        raise UserInputError(f"PSF with {psf.ndim} dimensions does not fit an image with {image_ndim} dimensions")
    if not np.all(np.isfinite(psf)):
        raise UserInputError("PSF contains NaN or infinite values")
    total = float(psf.sum())
    if total <= 0:
        raise UserInputError(f"PSF sums to {total!r}; it must sum to a positive value")
    if any(side % 2 == 0 for side in psf.shape):
        raise UserInputError(f"PSF shape {psf.shape!r} has an even side; every side must be odd (centred PSF)")
    return psf / total


def blur(
    image: np.ndarray,
    sigmas: float | Sequence[float] | None = None,
    *,
    axes: Sequence[int] | None = None,
    psf: np.ndarray | None = None,
) -> np.ndarray:
    """Blur ``image`` with a Gaussian (``sigmas``) or an explicit ``psf``; exactly one of them.

    Parameters
    ----------
    image : numpy.ndarray
        Image of any number of dimensions.
    sigmas : float or sequence of float, optional
        Gaussian standard deviation(s) in pixels: one for all ``axes`` or one per axis. Applied
        separably with :func:`scipy.ndimage.gaussian_filter1d` (``mode="reflect"``,
        ``truncate=4.0``).
    axes : sequence of int, optional
        Axes the sigmas belong to. Default: the last ``len(sigmas)`` axes, or the last two for a
        scalar sigma. Only used with ``sigmas``.
    psf : numpy.ndarray, optional
        Explicit PSF with odd sides, applied over the last ``psf.ndim`` axes (leading axes are
        independent). Normalised to sum 1. Borders are reflect-padded (as ``mode="reflect"``
        above) so that the output has the input's shape.

    Returns
    -------
    numpy.ndarray
        float32 array of ``image.shape``.

    Raises
    ------
    UserInputError
        On neither or both of ``sigmas``/``psf``, a negative sigma, axes that do not fit, or a
        PSF with NaN, a non-positive sum or an even side.
    """
    image = np.asarray(image)
    if (sigmas is None) == (psf is None):
        raise UserInputError("blur needs exactly one of sigmas (Gaussian) or psf (explicit array)")
    data = image.astype(np.float64)
    if psf is not None:
        if axes is not None:
            raise UserInputError("blur applies an explicit psf over the last psf.ndim axes; do not pass axes")
        kernel = _check_psf(psf, image.ndim)
        lead = image.ndim - kernel.ndim
        pad = [(0, 0)] * lead + [((s - 1) // 2, (s - 1) // 2) for s in kernel.shape]
        padded = np.pad(data, pad, mode="symmetric")  # numpy "symmetric" == scipy.ndimage "reflect"
        out = signal.fftconvolve(
            padded, kernel.reshape((1,) * lead + kernel.shape), mode="valid", axes=tuple(range(lead, image.ndim))
        )
        return out.astype(np.float32)
    if not isinstance(sigmas, str) and np.ndim(sigmas) > 0:
        sigma_list = [_check_sigma(s) for s in sigmas]
    else:
        sigma_list = [_check_sigma(sigmas)] * (2 if axes is None else len(tuple(axes)))
    if axes is None:
        if len(sigma_list) > image.ndim:
            raise UserInputError(f"{len(sigma_list)} sigmas do not fit an image with {image.ndim} dimensions")
        axes = tuple(range(image.ndim - len(sigma_list), image.ndim))
    axes = _normalize_axes(axes, image.ndim)
    if len(axes) != len(sigma_list):
        raise UserInputError(f"{len(sigma_list)} sigmas {tuple(sigma_list)!r} do not match {len(axes)} axes {axes!r}")
    for axis, sigma in zip(axes, sigma_list, strict=True):
        if sigma > 0:
            data = ndi.gaussian_filter1d(data, sigma, axis=axis, mode="reflect", truncate=_TRUNCATE)
    return data.astype(np.float32)


def bin_axes(image: np.ndarray, factor: int, axes: Sequence[int]) -> np.ndarray:
    """Average over ``factor``-sized blocks along each of ``axes``.

    This is what a camera with ``factor``-times larger pixels records: each pixel integrates
    the light over its area (here as a mean, so intensities keep their scale). A remainder that
    does not fill a block is cropped at the high end of the axis.

    Parameters
    ----------
    image : numpy.ndarray
        Image of any number of dimensions.
    factor : int
        Block size, >= 1.
    axes : sequence of int
        Axes to bin.

    Returns
    -------
    numpy.ndarray
        float32 array; each binned axis has length ``n // factor``.

    Raises
    ------
    UserInputError
        If ``factor < 1``, an axis is out of range, or an axis is shorter than ``factor``.
    """
    image = np.asarray(image)
    factor = _check_factor(factor)
    axes = _normalize_axes(axes, image.ndim)
    data = image.astype(np.float64)
    for axis in axes:
        n = data.shape[axis]
        if n < factor:
            raise UserInputError(f"axis {axis} has length {n}, shorter than the binning factor {factor}")
        blocks = n // factor
        data = np.take(data, np.arange(blocks * factor), axis=axis)
        shape = data.shape[:axis] + (blocks, factor) + data.shape[axis + 1 :]
        data = data.reshape(shape).mean(axis=axis + 1)
    return data.astype(np.float32)


def decimate(image: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Keep planes ``0, factor, 2 * factor, ...`` along ``axis``.

    This is what a z-stack acquired with a ``factor``-times larger step records: the planes are
    samples of the (PSF-blurred) object, not averages over the step.

    Parameters
    ----------
    image : numpy.ndarray
        Image of any number of dimensions.
    factor : int
        Step, >= 1.
    axis : int
        Axis to subsample.

    Returns
    -------
    numpy.ndarray
        float32 copy with ``ceil(n / factor)`` planes along ``axis``.

    Raises
    ------
    UserInputError
        If ``factor < 1`` or ``axis`` is out of range.
    """
    image = np.asarray(image)
    factor = _check_factor(factor)
    (axis,) = _normalize_axes((axis,), image.ndim)
    index = [slice(None)] * image.ndim
    index[axis] = slice(None, None, factor)
    return np.array(image[tuple(index)], dtype=np.float32, copy=True)


def add_poisson_gaussian(
    image: np.ndarray,
    peak: float,
    read_noise: float,
    rng: np.random.Generator,
    *,
    reference: float | None = None,
) -> np.ndarray:
    """Add shot noise for a photon budget ``peak`` and Gaussian read noise.

    The image is scaled so that ``reference`` becomes ``peak`` photons,
    ``noisy = Poisson(photons) + N(0, read_noise**2)`` is drawn, and the result is scaled back
    into the image's units (``noisy * reference / peak``). Negative values are clipped to 0
    before the Poisson draw (no negative photon counts).

    Parameters
    ----------
    image : numpy.ndarray
        Clean image, in any units.
    peak : float
        Photons at ``reference``, > 0. Lower means noisier.
    read_noise : float
        Standard deviation of the read noise in photons (electrons), >= 0.
    rng : numpy.random.Generator
        Source of randomness.
    reference : float, optional
        Intensity that maps to ``peak`` photons. Default: the 99.9th percentile of ``image``.
        Must be > 0.

    Returns
    -------
    numpy.ndarray
        float32 noisy image of ``image.shape``, in the image's units.

    Raises
    ------
    UserInputError
        If ``peak <= 0``, ``read_noise < 0``, or ``reference`` (given or computed) is not > 0.
    """
    image = np.asarray(image)
    peak_f = float(peak)
    if not math.isfinite(peak_f) or peak_f <= 0:
        raise UserInputError(f"peak {peak!r} must be a finite number of photons > 0")
    read_f = float(read_noise)
    if not math.isfinite(read_f) or read_f < 0:
        raise UserInputError(f"read_noise {read_noise!r} must be a finite number >= 0")
    data = image.astype(np.float64)
    ref = float(np.percentile(data, 99.9)) if reference is None else float(reference)
    if not math.isfinite(ref) or ref <= 0:
        what = "the 99.9th percentile of the image" if reference is None else "reference"
        raise UserInputError(f"reference intensity ({what}) is {ref!r}; it must be > 0 to set the photon scale")
    scale = peak_f / ref
    photons = np.clip(data, 0.0, None) * scale
    noisy = rng.poisson(photons).astype(np.float64)
    if read_f > 0:
        noisy += rng.normal(0.0, read_f, size=noisy.shape)
    return (noisy / scale).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the whole microscope
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Degradation:
    """A microscope model: blur, then subsample, then noise (each step optional).

    Parameters
    ----------
    psf_sigma : tuple of float
        Gaussian PSF standard deviation per axis in ``blur_axes``; empty: no blur.
    factor : int
        Subsampling factor along ``subsample_axes``; 1: no subsampling.
    subsample_axes : tuple of int
        Axes to subsample (required when ``factor > 1``).
    mode : {"bin", "decimate"}
        ``"bin"``: area average (:func:`bin_axes`, larger camera pixels); ``"decimate"``: keep
        every ``factor``-th plane (:func:`decimate`, larger z-step), one axis at a time.
    peak : float or None
        Photons at the 99.9th percentile for :func:`add_poisson_gaussian`; None: no noise (and
        ``read_noise`` is then unused).
    read_noise : float
        Read-noise standard deviation in photons, >= 0.
    blur_axes : tuple of int
        Axes the ``psf_sigma`` entries belong to.
    psf : numpy.ndarray or None
        A measured or computed PSF instead of the Gaussian: applied over the last ``psf.ndim`` axes
        (:func:`blur`); excludes ``psf_sigma``.
    """

    psf_sigma: tuple[float, ...] = ()
    factor: int = 1
    subsample_axes: tuple[int, ...] = ()
    mode: Literal["bin", "decimate"] = "bin"
    peak: float | None = None
    read_noise: float = 0.0
    blur_axes: tuple[int, ...] = ()
    psf: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        psf_sigma = tuple(_check_sigma(s) for s in self.psf_sigma)
        if self.psf is not None and psf_sigma:
            raise UserInputError("give a PSF image or Gaussian psf_sigma values, not both")
        blur_axes = tuple(self.blur_axes)
        subsample_axes = tuple(self.subsample_axes)
        if len(psf_sigma) != len(blur_axes):
            raise UserInputError(
                f"psf_sigma {psf_sigma!r} has {len(psf_sigma)} entries for {len(blur_axes)} blur_axes {blur_axes!r}"
            )
        for name, axes in (("blur_axes", blur_axes), ("subsample_axes", subsample_axes)):
            if any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in axes):
                raise UserInputError(f"{name} {axes!r} must be integers")
            if len(set(axes)) != len(axes):
                raise UserInputError(f"{name} {axes!r} name the same axis twice")
        factor = _check_factor(self.factor)
        if factor > 1 and not subsample_axes:
            raise UserInputError(f"subsampling factor {factor} needs at least one axis in subsample_axes")
        if self.mode not in _MODES:
            raise UserInputError(f"subsampling mode {self.mode!r} must be one of {_MODES}")
        if self.peak is not None:
            peak = float(self.peak)
            if not math.isfinite(peak) or peak <= 0:
                raise UserInputError(f"peak {self.peak!r} must be a finite number of photons > 0 (or None: no noise)")
        read_noise = float(self.read_noise)
        if not math.isfinite(read_noise) or read_noise < 0:
            raise UserInputError(f"read_noise {self.read_noise!r} must be a finite number >= 0")
        object.__setattr__(self, "psf_sigma", psf_sigma)
        object.__setattr__(self, "blur_axes", tuple(int(a) for a in blur_axes))
        object.__setattr__(self, "subsample_axes", tuple(int(a) for a in subsample_axes))
        object.__setattr__(self, "factor", factor)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Degrade ``image``: blur, then bin or decimate, then add noise.

        Parameters
        ----------
        image : numpy.ndarray
            Clean image.
        rng : numpy.random.Generator
            Source of randomness for the noise.

        Returns
        -------
        numpy.ndarray
            float32 degraded image (smaller along ``subsample_axes`` when ``factor > 1``).
        """
        data = np.asarray(image).astype(np.float32)
        if self.psf is not None:
            data = blur(data, psf=self.psf)
        elif self.psf_sigma and any(s > 0 for s in self.psf_sigma):
            data = blur(data, self.psf_sigma, axes=self.blur_axes)
        if self.factor > 1:
            if self.mode == "bin":
                data = bin_axes(data, self.factor, self.subsample_axes)
            else:
                _normalize_axes(self.subsample_axes, data.ndim)
                for axis in self.subsample_axes:
                    data = decimate(data, self.factor, axis)
        if self.peak is not None:
            data = add_poisson_gaussian(data, self.peak, self.read_noise, rng)
        return data
