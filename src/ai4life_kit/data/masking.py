"""Blind-spot masking for N2V, N2V2 and structN2V, on the whole batch, on the device.

Masked positions are stratified: one random pixel per grid cell, the cell side chosen so that
about ``masked_pixel_percentage`` % of the pixels are masked (as in n2v / CAREamics). Each
channel gets its own positions. The value at a masked pixel is replaced by

- ``uniform``: a random pixel of the ``roi_size`` neighbourhood, the centre excluded (N2V);
- ``median``: the median of that neighbourhood without the centre (N2V2).

structN2V additionally overwrites the pixels next to each blind spot along the axis the noise
is correlated on, so the network cannot read the noise from them. Those pixels are also left out
of the neighbourhood the blind spot's own replacement is drawn from (for ``uniform`` and
``median``): their noise is correlated with the centre's, so copying one of them into the blind
spot would hand the network the noise it must not see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["MaskSpec", "mask_batch"]


@dataclass(frozen=True)
class MaskSpec:
    """Masking options (from the training spec's algorithm section)."""

    percentage: float = 0.2
    roi_size: int = 5
    replacement: str = "uniform"  # or "median"
    struct_axis: int | None = None  # negative spatial axis (-1: x, -2: y, -3: z) or None
    struct_span: int = 0


def _masked_positions(shape: tuple[int, ...], percentage: float, generator: torch.Generator, device) -> torch.Tensor:
    """Stratified random positions ``(N, 2 + nd)``: (batch, channel, *spatial) indices."""
    b, c, *spatial = shape
    nd = len(spatial)
    cell = max(1, round((100.0 / percentage) ** (1.0 / nd)))
    n_cells = [math.ceil(s / cell) for s in spatial]
    grids = torch.meshgrid(*[torch.arange(n, device=device) * cell for n in n_cells], indexing="ij")
    corners = torch.stack([g.reshape(-1) for g in grids], dim=1)  # (K, nd)
    k = corners.shape[0]
    jitter = (torch.rand((b, c, k, nd), device=device, generator=generator) * cell).long()
    pos = corners.reshape(1, 1, k, nd) + jitter
    size = torch.tensor(spatial, device=device)
    inside = (pos < size).all(dim=-1)
    bi = torch.arange(b, device=device).reshape(b, 1, 1).expand(b, c, k)
    ci = torch.arange(c, device=device).reshape(1, c, 1).expand(b, c, k)
    idx = torch.cat([bi[..., None], ci[..., None], pos], dim=-1)
    return idx[inside]


def _neighbour_offsets(nd: int, roi: int, device, struct_axis: int | None = None, struct_span: int = 0) -> torch.Tensor:
    """Offsets ``(K, nd)`` of the ``roi``-sided neighbourhood replacement values may come from.

    Parameters
    ----------
    nd
        Number of spatial axes.
    roi
        Side of the neighbourhood (odd).
    device
        Device of the returned tensor.
    struct_axis, struct_span
        The structN2V mask (negative spatial axis and length). Offsets on that line within the
        span are left out: the struct mask hides those pixels because their noise is correlated
        with the centre's, and a replacement copied from one of them would leak that noise into
        the blind spot.
    """
    r = roi // 2
    ranges = [torch.arange(-r, r + 1, device=device)] * nd
    offs = torch.stack([g.reshape(-1) for g in torch.meshgrid(*ranges, indexing="ij")], dim=1)
    keep = (offs != 0).any(dim=1)  # the centre is never its own replacement
    if struct_axis is not None and struct_span > 1:
        axis = nd + struct_axis
        others = torch.cat([offs[:, :axis], offs[:, axis + 1 :]], dim=1)
        on_line = (others == 0).all(dim=1) & (offs[:, axis].abs() <= struct_span // 2)
        keep &= ~on_line
    return offs[keep]


def _inside(centre: torch.Tensor, offset: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """``centre + offset``, mirrored to ``centre - offset`` on axes where it leaves the patch.

    Clamping instead could land on the centre itself (the blind spot would see its own value).
    """
    target = centre + offset
    outside = (target < 0) | (target >= size)
    return torch.where(outside, centre - offset, target)


def mask_batch(x: torch.Tensor, spec: MaskSpec, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(masked input, mask)``; the loss is computed on ``mask`` pixels against ``x``."""
    device = x.device
    nd = x.ndim - 2
    spatial = torch.tensor(x.shape[2:], device=device)
    pos = _masked_positions(tuple(x.shape), spec.percentage, generator, device)  # (N, 2+nd)
    n = pos.shape[0]
    offs = _neighbour_offsets(nd, spec.roi_size, device, spec.struct_axis, spec.struct_span)  # (K, nd)
    if spec.replacement == "median":
        neigh = _inside(pos[:, None, 2:], offs[None], spatial)
        values = x[(pos[:, None, 0], pos[:, None, 1], *neigh.unbind(-1))]  # (N, K)
        replacement = values.median(dim=1).values
    else:
        choice = torch.randint(0, offs.shape[0], (n,), device=device, generator=generator)
        neigh = _inside(pos[:, 2:], offs[choice], spatial)
        replacement = x[(pos[:, 0], pos[:, 1], *neigh.unbind(-1))]
    masked = x.clone()
    if spec.struct_axis is not None and spec.struct_span > 1:
        # Overwrite the struct-mask neighbours with random values from the patch's range.
        axis = nd + spec.struct_axis  # index into the spatial coordinates
        half = spec.struct_span // 2
        steps = torch.tensor([d for d in range(-half, half + 1) if d != 0], device=device)
        coords = pos[:, None, :].repeat(1, steps.numel(), 1)
        coords[..., 2 + axis] += steps
        ok = (coords[..., 2 + axis] >= 0) & (coords[..., 2 + axis] < x.shape[2 + axis])
        coords = coords[ok]
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        lo = flat.amin(dim=-1)[coords[:, 0], coords[:, 1]]
        hi = flat.amax(dim=-1)[coords[:, 0], coords[:, 1]]
        noise = lo + (hi - lo) * torch.rand(coords.shape[0], device=device, generator=generator, dtype=x.dtype)
        masked[tuple(coords.unbind(-1))] = noise
    index = tuple(pos.unbind(-1))
    masked[index] = replacement
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[index] = True
    return masked, mask
