"""Interpolation onto a finer grid: the first step of super-resolution and isotropic restoration.

The restoration networks are same-size U-Nets that run on the finer grid (as CSBDeep's upsampling
and isotropic CARE do): the input is interpolated first, and the network restores what
interpolation cannot. Training inputs go through these very functions, so the network sees at
prediction exactly the interpolation it learnt to correct; without a network they are the
interpolation baselines the benchmarks report.

Two grid conventions, one per task, each the physically right one:

- :func:`upsample_lateral` (super-resolution): a low-resolution pixel is the *area* of ``f x f``
  fine pixels (a camera with larger pixels, :func:`ai4life_kit.simulate.degrade.bin_axes`), so
  its centre lies in the middle of its block: bilinear interpolation with ``align_corners=False``,
  ``n`` pixels become ``n f``. It is the operator the bioimage.io package's network calls.
- :func:`upsample_axis` (isotropic): an axial plane is a *sample* at ``z f`` on the fine grid (a
  stack taken with an ``f`` times larger step, :func:`ai4life_kit.simulate.degrade.decimate`), so
  output plane ``j`` lies at ``j / f`` input planes: ``n`` planes become ``(n - 1) f + 1``, plane
  ``z`` of the input is plane ``z f`` of the output, and nothing is extrapolated past the last one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["upsample_lateral", "upsample_axis", "upsampled_length", "bicubic_lateral"]


def _as_tensor(image: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    if isinstance(image, torch.Tensor):
        return image.float(), False
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), True


def upsample_lateral(image: np.ndarray | torch.Tensor, factor: int) -> np.ndarray | torch.Tensor:
    """Bilinear interpolation of the last two axes (Y, X) by ``factor`` (``align_corners=False``).

    ``image`` is ``(..., Y, X)``; the result is ``(..., factor Y, factor X)``, a numpy array for a
    numpy input. The same ATen operator as :class:`~ai4life_kit.models.unet.UNet`'s
    ``upsample_factor`` (what a package runs), so run directory and package agree.
    """
    x, to_numpy = _as_tensor(image)
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, *x.shape[-2:])
    out = torch.ops.aten.upsample_bilinear2d(flat, None, False, [float(factor), float(factor)])
    out = out.reshape(*lead, *out.shape[-2:])
    return out.numpy() if to_numpy else out


def bicubic_lateral(image: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic interpolation of the last two axes by ``factor`` (the super-resolution baseline)."""
    x, _ = _as_tensor(image)
    flat = x.reshape(-1, 1, *x.shape[-2:])
    out = F.interpolate(flat, scale_factor=float(factor), mode="bicubic", align_corners=False)
    return out.reshape(*x.shape[:-2], *out.shape[-2:]).numpy()


def upsampled_length(n: int, factor: int) -> int:
    """Planes :func:`upsample_axis` makes of ``n`` planes: ``(n - 1) factor + 1``."""
    return (n - 1) * factor + 1


def upsample_axis(image: np.ndarray, factor: int, axis: int, hold_last: bool = False) -> np.ndarray:
    """Linear interpolation along one axis, input plane ``z`` at output plane ``z factor``.

    Returns float32 with ``upsampled_length(n, factor)`` planes along ``axis``; with ``hold_last``
    ``n factor`` planes, the last plane held for the ``factor - 1`` past it: the grid of
    :class:`~ai4life_kit.models.unet.IsotropicUNet` (a package's network), with the same arithmetic.
    """
    x = np.moveaxis(np.asarray(image, dtype=np.float32), axis, 0)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"interpolating along an axis needs at least 2 planes, got {n}")
    following = np.concatenate([x[1:], x[-1:]]) if hold_last else x[1:]
    out = np.empty((n * factor if hold_last else upsampled_length(n, factor), *x.shape[1:]), np.float32)
    out[::factor] = x
    for k in range(1, factor):
        w = k / factor
        out[k::factor] = (1 - w) * x[: len(following)] + w * following
    return np.moveaxis(out, 0, axis)
