"""Random patch sampling from images already on the device, one gather per batch.

All training images (different sizes allowed) live in one flat buffer; a batch is drawn by
computing flat indices for every pixel of every patch (from each image's offset and strides in
the buffer) and gathering once. No Python work per patch, so the sampler keeps up with a GPU.
On the CPU the images loaded for training are that buffer already: sampling needs no copy.
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


def _shared_base(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """The flat float32 array that all ``arrays`` are views of, if there is one."""
    base = arrays[0].base
    if not (
        isinstance(base, np.ndarray)
        and base.dtype == np.float32
        and base.ndim == 1
        and base.flags.c_contiguous
        and base.flags.writeable
    ):
        return None
    for a in arrays:
        if a.base is not base or a.dtype != np.float32 or any(s < 0 or s % 4 for s in a.strides):
            return None
    return base


def _flat_buffer(arrays: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, list[int], list[list[int]]]:
    """``arrays`` in one flat float32 tensor on ``device``: the tensor, each array's offset and strides (elements).

    On the CPU, arrays that are views of one flat float32 array (the images
    :func:`~ai4life_kit.data.loading.load_training_set` loads, and any part of them) are sampled
    where they are: no copy. Anything else is copied, one array at a time, into a new compact buffer.
    """
    base = _shared_base(arrays) if device.type == "cpu" else None
    if base is not None:
        start = base.__array_interface__["data"][0]
        offsets = [(a.__array_interface__["data"][0] - start) // 4 for a in arrays]
        return torch.from_numpy(base), offsets, [[s // 4 for s in a.strides] for a in arrays]
    buffer = torch.empty(sum(a.size for a in arrays), dtype=torch.float32, device=device)
    offsets, strides, offset = [], [], 0
    for a in arrays:
        src = np.asarray(a, np.float32)
        if not src.flags.writeable or any(s < 0 for s in src.strides):  # torch.from_numpy wants neither
            src = np.array(src)
        buffer[offset : offset + a.size].view(a.shape).copy_(torch.from_numpy(src))
        offsets.append(offset)
        strides.append(np.cumprod([1, *a.shape[:0:-1]])[::-1].tolist())
        offset += a.size
    return buffer, offsets, strides


class PatchSampler(PatchPositions):
    """Draw ``(B, C, *patch)`` patches (and the matching target patches) from images in memory.

    Parameters
    ----------
    images
        Canonical ``(S, C, *spatial)`` float32 arrays, already normalised. On the CPU, views of
        one flat float32 array (as :func:`~ai4life_kit.data.loading.load_training_set` loads
        them) are sampled where they are, and so see later changes to it; anything else is copied.
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
        self.buffer, offsets, strides = _flat_buffer(images, device)
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=device)
        self.strides = torch.tensor(strides, dtype=torch.int64, device=device)  # (F, 2+nd), in elements
        self.target_buffer = self.target_offsets = self.target_strides = None
        if targets is not None:
            self.target_buffer, t_offsets, t_strides = _flat_buffer(targets, device)
            if (t_offsets, t_strides) != (offsets, strides):
                self.target_offsets = torch.tensor(t_offsets, dtype=torch.int64, device=device)
                self.target_strides = torch.tensor(t_strides, dtype=torch.int64, device=device)
        # Per-axis pixel offsets within a patch and channel offsets, broadcastable to (B, C, *patch)
        self._grids = [
            torch.arange(p, device=device).reshape((1, 1) + tuple(p if j == k else 1 for j in range(nd)))
            for k, p in enumerate(self.patch)
        ]
        self._channels = torch.arange(self.n_channels, device=device).reshape((1, -1) + (1,) * nd)

    def _index(self, offsets: torch.Tensor, strides: torch.Tensor, positions) -> torch.Tensor:
        """Flat indices ``(B, C, *patch)`` of the patches at ``positions``, in a buffer laid out as given."""
        files, sample, origin = positions
        nd = len(self.patch)
        st = strides[files]  # (B, 2+nd)
        expand = (-1,) + (1,) * (nd + 1)
        index = (offsets[files] + sample * st[:, 0]).reshape(expand) + self._channels * st[:, 1].reshape(expand)
        for k in range(nd):
            index = index + (origin[:, k].reshape(expand) + self._grids[k]) * st[:, 2 + k].reshape(expand)
        return index

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One batch of (input, target) patches; target is None for self-supervised data."""
        positions = self.draw(batch_size, generator)
        index = self._index(self.offsets, self.strides, positions)
        x = self.buffer[index]
        if self.target_buffer is None:
            return x, None
        if self.target_offsets is not None:  # laid out unlike the inputs
            index = self._index(self.target_offsets, self.target_strides, positions)
        return x, self.target_buffer[index]
