"""Batch-wise random flips and 90-degree rotations, the same for input and target patches."""

from __future__ import annotations

import torch

__all__ = ["augment_batch"]


def _select(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def augment_batch(
    tensors: list[torch.Tensor], generator: torch.Generator, rotate: bool, flip_axes: tuple[int, ...]
) -> list[torch.Tensor]:
    """Apply one random transform per sample to every tensor of ``tensors`` alike.

    Parameters
    ----------
    tensors
        ``(B, C, *spatial)`` tensors (input, and target if any).
    rotate
        Random multiples of 90 degrees in the YX plane (needs square YX patches). Off for
        structN2V, whose mask follows the direction of the noise correlation.
    flip_axes
        Negative spatial axes that may be flipped (e.g. ``(-2, -1)``).
    """
    b = tensors[0].shape[0]
    dev = tensors[0].device
    draws = torch.rand((b, 1 + len(flip_axes)), device=dev, generator=generator)
    out = list(tensors)
    if rotate:
        k = (draws[:, 0] * 4).long()
        for i, t in enumerate(out):
            rotated = t
            for quarter in (1, 2, 3):
                rotated = _select(k == quarter, torch.rot90(t, quarter, (-2, -1)), rotated)
            out[i] = rotated
    for j, axis in enumerate(flip_axes):
        flip = draws[:, 1 + j] < 0.5
        out = [_select(flip, torch.flip(t, (axis,)), t) for t in out]
    return out
