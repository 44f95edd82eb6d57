"""Training pairs for CARE's restoration tasks: super-resolution, isotropic reconstruction, deconvolution.

Real ground truth for these tasks is almost never available, so (as in CARE, Weigert et al.
2018) the pairs are made from the user's own data: the clean or high-SNR image is the target,
and the degradation model (:mod:`ai4life_kit.simulate.degrade`) makes the matching input. Every
input is then interpolated back onto the target's grid (:mod:`ai4life_kit.prediction.resample`):
the network is a same-size U-Net that learns what interpolation cannot restore, and prediction
interpolates its input in the very same way.

- **super-resolution**: PSF blur, area binning by ``factor`` in Y and X, noise; bilinear
  interpolation back. With real pairs (``--target`` ``factor`` times larger), the inputs are
  only interpolated.
- **isotropic**: the targets are the volume's lateral (YX) slices; along Y they are blurred with
  the axial PSF and sampled every ``factor`` pixels, as the microscope samples Z, then linearly
  interpolated back. The network then restores XZ and YZ slices of the Z-interpolated volume.
- **deconvolution**: PSF blur and noise; the target keeps its sharpness.

The arrays come back as views of one flat float32 buffer per side, as
:func:`~ai4life_kit.data.loading.load_training_set` gives them (the patch sampler reads them in place).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ai4life_kit.config.spec import TaskConfig
from ai4life_kit.data.loading import TrainingSet
from ai4life_kit.errors import DataError
from ai4life_kit.prediction.resample import upsample_axis, upsample_lateral, upsampled_length
from ai4life_kit.simulate.degrade import Degradation

__all__ = ["make_restoration_pairs", "degradation_of", "read_psf", "write_pairs_plot"]

# The noise of every pair is drawn from this stream of the training seed, so a resumed run and a
# rerun with the same seed train on the same inputs.
_PAIRS_STREAM = 0x5EED


def degradation_of(task: TaskConfig, spatial_ndim: int = 2) -> Degradation:
    """The degradation model of ``task`` for canonical ``(S, C, *spatial)`` images."""
    d = task.degradation
    sigma = d.psf_sigma
    if task.kind == "isotropic":  # the axial PSF and the axial sampling, seen along Y
        blur_axes, sigmas, subsample, mode = (-2,), (sigma,), (-2,), "decimate"
    elif task.kind == "super_resolution":
        blur_axes, sigmas, subsample, mode = (-2, -1), (sigma, sigma), (-2, -1), "bin"
    else:  # deconvolution: every spatial axis, the same sigma
        blur_axes = tuple(range(-spatial_ndim, 0))
        sigmas, subsample, mode = (sigma,) * spatial_ndim, (), "bin"
    psf = None
    if d.psf is not None:
        if task.kind == "isotropic":  # the extra axial blur, a profile along Y of the lateral slices
            psf = read_psf(Path(d.psf), 1)[:, None]
        else:
            psf = read_psf(Path(d.psf), 2 if task.kind == "super_resolution" else spatial_ndim)
    if sigma == 0 or psf is not None:
        blur_axes, sigmas = (), ()
    return Degradation(
        psf_sigma=sigmas,
        blur_axes=blur_axes,
        psf=psf,
        factor=task.factor if subsample else 1,
        subsample_axes=subsample,
        mode=mode,
        peak=d.peak,
        read_noise=d.read_noise,
    )


def read_psf(path: Path, ndim: int) -> np.ndarray:
    """A PSF image as float64 summing to 1, odd-sized, with ``ndim`` axes (a one-line error otherwise)."""
    import tifffile

    try:
        psf = np.squeeze(tifffile.imread(path)).astype(np.float64)
    except (OSError, ValueError) as exc:
        raise DataError(f"task.degradation.psf {path} cannot be read as a TIFF ({exc})") from None
    if psf.ndim != ndim or any(n % 2 == 0 for n in psf.shape):
        raise DataError(f"task.degradation.psf {path} has shape {psf.shape}; it needs {ndim} axes of odd sizes")
    if not np.isfinite(psf).all() or psf.sum() <= 0 or psf.min() < 0:
        raise DataError(f"task.degradation.psf {path} must be finite and non-negative with a positive sum")
    return psf / psf.sum()


def _flat(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Copies of ``arrays`` as views of one flat float32 buffer (what the patch sampler reads in place)."""
    flat = np.empty(sum(a.size for a in arrays), np.float32)
    out, offset = [], 0
    for a in arrays:
        view = flat[offset : offset + a.size].reshape(a.shape)
        view[...] = a
        out.append(view)
        offset += a.size
    return out


def _per_channel(degradation: Degradation, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``degradation`` of a ``(S, C, ...)`` image channel by channel: each gets ``peak`` photons at its own
    99.9th percentile (a dim channel would otherwise get a fraction of the noise level asked for)."""
    return np.concatenate([degradation.apply(image[:, c : c + 1], rng) for c in range(image.shape[1])], axis=1)


def _degraded_input(clean: np.ndarray, task: TaskConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(input, target)`` of one clean ``(S, C, *spatial)`` image, both on the target's grid."""
    f = task.factor
    degradation = degradation_of(task, clean.ndim - 2)
    if task.kind == "super_resolution":
        ny, nx = (n // f * f for n in clean.shape[-2:])  # whole low-resolution pixels only
        target = clean[..., :ny, :nx]
        return upsample_lateral(_per_channel(degradation, target, rng), f), target
    if task.kind == "isotropic":
        low = _per_channel(degradation, clean, rng)
        n = upsampled_length(low.shape[-2], f)  # the target rows the samples span
        return upsample_axis(low, f, axis=-2), clean[..., :n, :]
    return _per_channel(degradation, clean, rng), clean


def make_restoration_pairs(
    ts: TrainingSet, task: TaskConfig, seed: int, patch: Sequence[int] | None = None
) -> TrainingSet:
    """``ts`` (in memory, not yet normalised) with inputs and targets for ``task``.

    Parameters
    ----------
    ts
        The loaded training set: clean images (``task.makes_pairs``), or inputs with their
        targets (super-resolution from real pairs: targets ``factor`` times larger in Y and X;
        deconvolution from real pairs: unchanged).
    task
        The spec's task (not ``denoise``).
    seed
        The training seed (the pairs' noise is drawn from it).
    patch
        The training patch size: an isotropic image whose sampled rows cannot hold one is refused,
        naming the rows it keeps.
    """
    if ts.lazy:
        raise DataError(f"task {task.kind!r} makes its training pairs in memory; use data.loading: memory")
    f = task.factor
    if not task.makes_pairs:
        if task.kind != "super_resolution":
            return ts
        assert ts.targets is not None
        return dataclasses.replace(ts, images=_flat([upsample_lateral(x, f) for x in ts.images]))
    rng = np.random.default_rng([seed, _PAIRS_STREAM])
    pairs = []
    for image, name in zip(ts.images, ts.names, strict=True):
        if task.kind == "isotropic":
            rows = image.shape[-2]
            kept = upsampled_length(-(-rows // f), f) if rows >= 2 * f else 0
            if rows < 2 * f or (patch is not None and kept < patch[0]):
                why = f"the patch size is {patch[0]}" if rows >= 2 * f else "at least two samples are needed"
                raise DataError(
                    f"{name}: Y is {rows} pixels, which keeps {kept} rows when sampled every {f} (the anisotropy), "
                    f"and {why}"
                )
        pairs.append(_degraded_input(image, task, rng))
    inputs = _flat([p[0] for p in pairs])
    targets = _flat([p[1] for p in pairs])
    del pairs
    return dataclasses.replace(ts, images=inputs, targets=targets)


def write_pairs_plot(path: Path, ts: TrainingSet, task: TaskConfig, n: int = 3, crop: int = 96) -> Path:
    """A PNG of ``n`` example training pairs (input | target), crops from the middle of the images."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from ai4life_kit.fileio import atomic_path

    assert ts.targets is not None
    picks = [(i, s) for i, img in enumerate(ts.images) for s in range(img.shape[0])]
    picks = [picks[k] for k in np.linspace(0, len(picks) - 1, min(n, len(picks))).round().astype(int)]
    fig, axes = plt.subplots(len(picks), 2, figsize=(6, 3 * len(picks)), squeeze=False)
    for row, (i, s) in enumerate(picks):
        x, y = ts.images[i][s, 0], ts.targets[i][s, 0]
        if x.ndim == 3:  # a 3D model's volume: its middle Z plane
            x, y = x[x.shape[0] // 2], y[y.shape[0] // 2]
        cy, cx = (max(0, (m - crop) // 2) for m in y.shape[-2:])
        window = (slice(cy, cy + crop), slice(cx, cx + crop))
        for col, (image, title) in enumerate(((x, "input (degraded, interpolated)"), (y, "target"))):
            # Each panel its own stretch: the arrays may already be normalised, each side with its own statistics.
            lo, hi = np.percentile(image[window], (1, 99.8))
            ax = axes[row][col]
            ax.imshow(image[window], cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
            ax.set_title(f"{ts.names[i]} [{s}]: {title}" if col == 0 else title, fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{task.kind.replace('_', '-')} training pairs (factor {task.factor})", fontsize=10)
    fig.tight_layout()
    with atomic_path(Path(path), overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
