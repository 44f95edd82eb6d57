"""Synthetic fluorescence images with a known ground truth, for tests, demos and benchmarks.

The model follows what CARE's authors did for semi-synthetic data: a noise-free expectation
``lam`` (in photons) is drawn from, and the camera adds read noise and an offset::

    noisy = round(Poisson(lam) + N(0, read_noise**2) [+ structured noise] + offset)  (uint16)
    gt    = lam + offset                                                             (float32)

so ``gt`` is in the same units as ``noisy`` and PSNR between them is meaningful.

The ground truth mimics a fluorescence image: thin curvy filaments (persistent random walks),
bright granules of two sizes, a few large nucleus-like blobs with some texture, a smooth low
background, all seen through a Gaussian PSF. Only numpy and ``scipy.ndimage`` are used, and
everything is vectorised: a 1024x1024 image takes a fraction of a second.

Randomness comes only from ``np.random.default_rng``. Writing a dataset of such images is
:mod:`ai4life_kit.simulate.dataset`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ai4life_kit.errors import UserInputError

__all__ = [
    "DEFAULT_OFFSET",
    "ROW_NOISE_WIDTH",
    "STRUCTURED_NOISE",
    "add_noise",
    "column_pattern",
    "parse_shape",
    "simulate_ground_truth",
    "structured_noise_std",
]

STRUCTURED_NOISE = ("none", "row", "column")
DEFAULT_OFFSET = 100.0
# Width of the box filter along x for "row" noise: correlations 0.8/0.6/0.4/0.2 at x-lags 1..4.
ROW_NOISE_WIDTH = 5
# Written into every simulated folder; `--overwrite` only deletes folders that carry it.
_UINT16_MAX = 65535
# Lateral PSF sigma in pixels; the axial one is larger, as in a real widefield/confocal PSF.
_PSF_SIGMA_YX = 1.0
_PSF_SIGMA_Z = 2.0


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``"Y,X"`` or ``"Z,Y,X"`` (``x`` also accepted as separator) into a validated shape."""
    parts = [p.strip() for p in text.replace("x", ",").replace("X", ",").split(",")]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UserInputError(f"shape {text!r} is not a comma-separated list of integers (e.g. 512,512)") from None
    if len(shape) not in (2, 3) or any(d < 1 for d in shape):
        raise UserInputError(f"shape {text!r} must be 2 or 3 positive integers (Y,X or Z,Y,X)")
    return shape


def _check_shape(shape: Any) -> tuple[int, ...]:
    try:
        dims = tuple(int(s) for s in shape)
        integral = all(int(s) == s for s in shape)
    except (TypeError, ValueError):
        raise UserInputError(f"shape {shape!r} must be 2 or 3 positive integers (Y,X or Z,Y,X)") from None
    if len(dims) not in (2, 3) or not integral or any(d < 1 for d in dims):
        raise UserInputError(f"shape {shape!r} must be 2 or 3 positive integers (Y,X or Z,Y,X)")
    return dims


def _check_peak(peak: float) -> float:
    peak = float(peak)
    if not math.isfinite(peak) or peak <= 0:
        raise UserInputError(f"peak {peak} must be a positive number of photons")
    return peak


def _check_noise_args(read_noise: float, structured_noise: str, offset: float) -> None:
    if not math.isfinite(read_noise) or read_noise < 0:
        raise UserInputError(f"read noise {read_noise} must be >= 0")
    if structured_noise not in STRUCTURED_NOISE:
        raise UserInputError(f"structured noise {structured_noise!r} must be one of {', '.join(STRUCTURED_NOISE)}")
    if not math.isfinite(offset) or not 0 <= offset < _UINT16_MAX:
        raise UserInputError(f"camera offset {offset} must be in [0, {_UINT16_MAX})")


# ---------------------------------------------------------------------------------------------
# ground truth
# ---------------------------------------------------------------------------------------------
def _psf_sigma(ndim: int) -> tuple[float, ...]:
    return (_PSF_SIGMA_Z, _PSF_SIGMA_YX, _PSF_SIGMA_YX) if ndim == 3 else (_PSF_SIGMA_YX, _PSF_SIGMA_YX)


def _gauss_peak(sigma: tuple[float, ...]) -> float:
    """Peak value of a unit-mass Gaussian with these sigmas (to normalise blurred deltas)."""
    return 1.0 / math.prod(math.sqrt(2 * math.pi) * s for s in sigma)


def _splat(shape: tuple[int, ...], coords: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Accumulate ``weights`` at the rounded ``coords`` (``(ndim, n)``); out-of-bounds points drop."""
    idx = np.rint(coords).astype(np.int64)
    inside = np.all((idx >= 0) & (idx < np.asarray(shape)[:, None]), axis=0)
    flat = np.ravel_multi_index(tuple(idx[:, inside]), shape)
    size = math.prod(shape)
    return np.bincount(flat, weights=weights[inside], minlength=size).reshape(shape).astype(np.float32)


def _filaments(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Thin curvy filaments: persistent random walks, rasterised at half-pixel steps, PSF-blurred.

    An isolated filament of brightness ``b`` peaks at about ``b`` after the blur.
    """
    ndim = len(shape)
    lateral = min(shape[-2:])
    area = shape[-1] * shape[-2]
    length = float(np.clip(0.6 * lateral, 8, 400))
    depth_factor = max(1.0, shape[0] / 10) if ndim == 3 else 1.0
    n_fil = max(2, round(area * depth_factor / (25 * length)))
    step = 0.5
    n_steps = max(2, int(length / step))

    # Heading angle diffuses with a per-filament persistence length (20-150 px): variance of the
    # angle change per unit length is 1 / persistence.
    persistence = rng.uniform(20, 150, size=(n_fil, 1))
    dtheta = rng.standard_normal((n_fil, n_steps)) * np.sqrt(step / persistence)
    theta = rng.uniform(0, 2 * np.pi, size=(n_fil, 1)) + np.cumsum(dtheta, axis=1)
    start = rng.uniform(0, 1, size=(ndim, n_fil, 1)) * (np.asarray(shape, float) - 1)[:, None, None]
    if ndim == 3:
        # Mostly lateral filaments (thin optical sections), drifting slowly in z.
        dpsi = rng.standard_normal((n_fil, n_steps)) * np.sqrt(step / persistence) * 0.5
        psi = np.clip(rng.normal(0, 0.15, (n_fil, 1)) + np.cumsum(dpsi, axis=1), -0.5, 0.5)
        dz, dyx = np.sin(psi), np.cos(psi)
        steps = np.stack([dz, dyx * np.sin(theta), dyx * np.cos(theta)]) * step
    else:
        steps = np.stack([np.sin(theta), np.cos(theta)]) * step
    coords = (start + np.cumsum(steps, axis=2)).reshape(ndim, -1)
    brightness = rng.uniform(0.3, 1.0, size=(n_fil, 1))
    weights = np.broadcast_to(brightness * step, (n_fil, n_steps)).reshape(-1)

    sigma = _psf_sigma(ndim)
    img = ndi.gaussian_filter(_splat(shape, coords, weights), sigma)
    # A line blurred by a Gaussian peaks at 1 / prod(sqrt(2 pi) sigma) over the dims across it.
    return img / _gauss_peak(sigma[:-1])


def _granules(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Bright point-like granules in two size classes (vesicles and larger puncta)."""
    ndim = len(shape)
    size = math.prod(shape)
    psf = np.asarray(_psf_sigma(ndim))
    out = np.zeros(shape, np.float32)
    for radius, per_pixel, (lo, hi) in ((0.7, 1 / 1500, (0.5, 1.2)), (2.0, 1 / 8000, (0.3, 0.7))):
        n = max(1, round(size * per_pixel))
        coords = rng.uniform(0, 1, size=(ndim, n)) * (np.asarray(shape, float) - 1)[:, None]
        sigma = tuple(np.sqrt(psf**2 + radius**2))
        blurred = ndi.gaussian_filter(_splat(shape, coords, rng.uniform(lo, hi, n)), sigma)
        out += blurred / _gauss_peak(sigma)
    return out


def _nuclei(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A few large ellipse/ellipsoid blobs with a soft edge and smooth internal texture."""
    ndim = len(shape)
    lateral = min(shape[-2:])
    area = shape[-1] * shape[-2]
    n = int(np.clip(round(area / 200**2), 1, 12))
    out = np.zeros(shape, np.float32)
    for _ in range(n):
        radii_yx = rng.uniform(0.04, 0.09, size=2) * lateral + 2
        radius_z = min(radii_yx.mean() / 2, shape[0] / 3) + 1 if ndim == 3 else None
        radii = np.array(([radius_z] if ndim == 3 else []) + list(radii_yx))
        center = rng.uniform(0, 1, size=ndim) * (np.asarray(shape) - 1)
        # Work in the bounding box only; it is small compared with the image.
        lo = np.maximum(np.floor(center - radii.max() - 2), 0).astype(int)
        hi = np.minimum(np.ceil(center + radii.max() + 3), shape).astype(int)
        if ndim == 3:  # the z extent of the box is set by the z radius only
            lo[0] = max(int(center[0] - radii[0] - 2), 0)
            hi[0] = min(int(center[0] + radii[0] + 3), shape[0])
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grids = np.ogrid[box]
        rel = [g - c for g, c in zip(grids, center, strict=True)]
        angle = rng.uniform(0, np.pi)
        y_rot = rel[-2] * np.cos(angle) + rel[-1] * np.sin(angle)
        x_rot = -rel[-2] * np.sin(angle) + rel[-1] * np.cos(angle)
        r2 = (y_rot / radii[-2]) ** 2 + (x_rot / radii[-1]) ** 2
        if ndim == 3:
            r2 = r2 + (rel[0] / radii[0]) ** 2
        # Soft edge over ~2 px: smoothstep of the distance inside the boundary.
        edge = np.clip((1 - np.sqrt(r2)) * radii_yx.mean() / 2, 0, 1)
        mask = edge * edge * (3 - 2 * edge)
        box_shape = mask.shape
        texture = ndi.gaussian_filter(rng.standard_normal(box_shape).astype(np.float32), 2.0)
        texture /= texture.std() + 1e-6
        brightness = rng.uniform(0.2, 0.45)
        out[box] += (brightness * mask * np.clip(1 + 0.25 * texture, 0.3, None)).astype(np.float32)
    return ndi.gaussian_filter(out, _psf_sigma(ndim))


def _background(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Low smooth background: a constant plus a few broad separable Gaussian bumps."""
    ndim = len(shape)
    out = np.full(shape, rng.uniform(0.02, 0.05), np.float32)
    for _ in range(3):
        bump = np.asarray(rng.uniform(0.02, 0.08), np.float32)
        for axis, n in enumerate(shape):
            # Only broad variations: sigma between a fifth and a half of the axis (>= 2 px).
            sigma = max(2.0, rng.uniform(0.2, 0.5) * n)
            centre = rng.uniform(0, n)
            profile = np.exp(-0.5 * ((np.arange(n) - centre) / sigma) ** 2).astype(np.float32)
            bump = bump * profile.reshape([n if a == axis else 1 for a in range(ndim)])
        out += bump
    return out


def simulate_ground_truth(shape: tuple[int, ...], rng: np.random.Generator, peak: float = 20.0) -> np.ndarray:
    """Noise-free fluorescence-like expectation ``lam`` in photons, 2D (Y,X) or 3D (Z,Y,X).

    Parameters
    ----------
    shape
        ``(Y, X)`` or ``(Z, Y, X)``, positive integers.
    rng
        Source of randomness (``np.random.default_rng(seed)``).
    peak
        Expected photon count of the brightest pixel; ``lam.max() == peak``.

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape``, strictly positive (the background), maximum ``peak``.
    """
    shape = _check_shape(shape)
    peak = _check_peak(peak)
    lam = _background(shape, rng)
    lam += _nuclei(shape, rng)
    lam += _filaments(shape, rng)
    lam += _granules(shape, rng)
    lam *= np.float32(peak / float(lam.max()))
    return lam.astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------------------------
def structured_noise_std(lam: np.ndarray) -> float:
    """Std of the structured noise: the shot-noise std at mid intensity, ``sqrt(mid(lam))``.

    This keeps structured noise visible but not dominant at every photon level.
    """
    return math.sqrt(max(0.5 * (float(lam.max()) + float(lam.min())), 0.0))


def column_pattern(width: int, rng: np.random.Generator, std: float) -> np.ndarray:
    """Per-column fixed-pattern offsets (sCMOS-like), ``N(0, std**2)``, shape ``(width,)``."""
    return (rng.standard_normal(width) * std).astype(np.float32)


def _row_noise(shape: tuple[int, ...], rng: np.random.Generator, std: float) -> np.ndarray:
    """White noise box-filtered along x, rescaled to ``std``: correlated along rows only."""
    white = rng.standard_normal(shape, dtype=np.float32)
    # A box of width k divides the variance by k; multiply by sqrt(k) to get unit variance back.
    smooth = ndi.uniform_filter1d(white, ROW_NOISE_WIDTH, axis=-1, mode="wrap")
    return smooth * np.float32(math.sqrt(ROW_NOISE_WIDTH) * std)


def add_noise(
    lam: np.ndarray,
    rng: np.random.Generator,
    read_noise: float = 2.0,
    structured_noise: str = "none",
    offset: float = DEFAULT_OFFSET,
    column_offsets: np.ndarray | None = None,
) -> np.ndarray:
    """Camera model: ``Poisson(lam) + N(0, read_noise**2)`` (+ structured) ``+ offset``, as uint16.

    Parameters
    ----------
    lam
        Expected photon counts (>= 0), any shape ending in X.
    rng
        Source of randomness.
    read_noise
        Std of the Gaussian read noise, in counts.
    structured_noise
        ``"none"``; ``"row"``: white noise box-filtered along x (width 5), with the std of the
        shot noise at mid intensity, i.e. horizontally correlated noise as structN2V targets;
        ``"column"``: per-column offsets (fixed pattern), the same for every image of a run
        when ``column_offsets`` is passed.
    offset
        Camera offset (baseline) added before rounding, in counts.
    column_offsets
        Pattern for ``"column"`` noise, shape ``(X,)``; drawn from ``rng`` when ``None``.

    Returns
    -------
    numpy.ndarray
        uint16 array of ``lam.shape``, rounded and clipped to ``[0, 65535]``.
    """
    _check_noise_args(read_noise, structured_noise, offset)
    lam = np.asarray(lam)
    if not np.isfinite(lam).all() or lam.min() < 0:
        raise UserInputError("expected photon counts (lam) must be finite and >= 0")
    counts = rng.poisson(lam).astype(np.float32)
    if read_noise > 0:
        counts += rng.standard_normal(lam.shape, dtype=np.float32) * np.float32(read_noise)
    if structured_noise == "row":
        counts += _row_noise(lam.shape, rng, structured_noise_std(lam))
    elif structured_noise == "column":
        if column_offsets is None:
            column_offsets = column_pattern(lam.shape[-1], rng, structured_noise_std(lam))
        if np.shape(column_offsets) != (lam.shape[-1],):
            raise UserInputError(
                f"column offsets of shape {np.shape(column_offsets)} do not match image width {lam.shape[-1]}"
            )
        counts += np.asarray(column_offsets, np.float32)
    counts += np.float32(offset)
    return np.clip(np.rint(counts), 0, _UINT16_MAX).astype(np.uint16)


# ---------------------------------------------------------------------------------------------
# dataset on disk
# ---------------------------------------------------------------------------------------------
