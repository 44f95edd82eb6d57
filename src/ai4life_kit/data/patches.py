"""Random patch sampling from images already on the device, one gather per batch.

All training images (different sizes allowed) are flattened into one buffer; a batch is drawn
by computing flat indices for every pixel of every patch and gathering once. No Python work
per patch, so the sampler keeps up with a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ai4life_kit.errors import DataError

__all__ = ["PatchPositions", "PatchSampler"]


class PatchPositions:
    """Uniform random patch positions over all valid positions of all images.

    Parameters
    ----------
    shapes
        Canonical ``(S, C, *spatial)`` shape of every image.
    patch_size
        Patch size per spatial axis.
    device
        Where the random numbers are drawn (the training generator's device).
    names
        File names for error messages.
    """

    def __init__(
        self,
        shapes: Sequence[Sequence[int]],
        patch_size: Sequence[int],
        device: torch.device,
        names: Sequence[str] | None = None,
    ) -> None:
        self.patch = tuple(int(p) for p in patch_size)
        self.device = device
        self.n_channels = int(shapes[0][1])
        weights = []
        for i, shape in enumerate(shapes):
            spatial = tuple(shape[2:])
            if any(s < p for s, p in zip(spatial, self.patch, strict=True)):
                name = names[i] if names is not None else f"image {i}"
                raise DataError(f"{name}: spatial size {spatial} is smaller than the patch size {self.patch}")
            weights.append(shape[0] * np.prod([s - p + 1 for s, p in zip(spatial, self.patch, strict=True)]))
        self.shapes = torch.tensor([list(s) for s in shapes], dtype=torch.int64, device=device)  # (F, 2+nd)
        self.weights = torch.tensor(weights, dtype=torch.float64, device=device)

    def draw(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random patch positions: ``(file, sample, origin)`` with ``origin`` of shape ``(B, nd)``.

        Uniform over all valid patch positions of all files. :class:`LazyPatchSampler` draws with
        this same code, so both samplers give the same patches for the same generator state.
        """
        nd = len(self.patch)
        files = torch.multinomial(self.weights, batch_size, replacement=True, generator=generator)
        shape = self.shapes[files]  # (B, 2+nd)
        u = torch.rand((batch_size, 1 + nd), device=self.device, generator=generator, dtype=torch.float64)
        sample = (u[:, 0] * shape[:, 0]).long()
        patch = torch.tensor(self.patch, device=self.device)
        origin = (u[:, 1:] * (shape[:, 2:] - patch + 1)).long()
        return files, sample, origin


class PatchSampler(PatchPositions):
    """Draw ``(B, C, *patch)`` patches (and the matching target patches) from images in memory.

    Parameters
    ----------
    images
        Canonical ``(S, C, *spatial)`` float32 arrays, already normalised.
    targets
        Arrays of the same shapes (CARE / Noise2Noise) or ``None``.
    patch_size
        Patch size per spatial axis.
    device
        Where the buffers live and patches are produced.
    names
        File names for error messages.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        targets: Sequence[np.ndarray] | None,
        patch_size: Sequence[int],
        device: torch.device,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__([img.shape for img in images], patch_size, device, names)
        nd = len(self.patch)
        offsets = np.cumsum([0] + [img.size for img in images[:-1]]).tolist()
        self.buffer = torch.cat([torch.from_numpy(np.ascontiguousarray(a)).reshape(-1) for a in images]).to(device)
        self.target_buffer = None
        if targets is not None:
            self.target_buffer = torch.cat([torch.from_numpy(np.ascontiguousarray(a)).reshape(-1) for a in targets]).to(
                device
            )
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=device)
        # Per-axis pixel offsets within a patch and channel offsets, broadcastable to (B, C, *patch)
        self._grids = [
            torch.arange(p, device=device).reshape((1, 1) + tuple(p if j == k else 1 for j in range(nd)))
            for k, p in enumerate(self.patch)
        ]
        self._channels = torch.arange(self.n_channels, device=device).reshape((1, -1) + (1,) * nd)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One batch of (input, target) patches; target is None for self-supervised data."""
        dev = self.device
        nd = len(self.patch)
        files, sample, origin = self.draw(batch_size, generator)
        shape = self.shapes[files]
        spatial = shape[:, 2:]
        # strides of a C-contiguous (S, C, *spatial) array
        strides = [torch.ones(batch_size, dtype=torch.int64, device=dev)]
        for k in range(nd - 1, -1, -1):
            strides.insert(0, strides[0] * spatial[:, k])
        channel_stride = strides[0]
        sample_stride = channel_stride * shape[:, 1]
        base = self.offsets[files] + sample * sample_stride
        expand = (-1,) + (1,) * (nd + 1)
        index = base.reshape(expand) + self._channels * channel_stride.reshape(expand)
        for k in range(nd):
            index = index + (origin[:, k].reshape(expand) + self._grids[k]) * strides[k + 1].reshape(expand)
        x = self.buffer[index]
        y = self.target_buffer[index] if self.target_buffer is not None else None
        return x, y
