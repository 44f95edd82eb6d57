"""Training on data larger than memory: patches read from the files on demand.

:class:`LazyPatchSampler` draws patch positions with exactly the code of the in-memory
:class:`~ai4life_kit.data.patches.PatchSampler` (same generator, same patches), then reads each
patch's window from its :class:`~ai4life_kit.data.views.CanonicalView` (a short-lived memory map
for plain TIFFs, cached decoded chunks for Zarr and compressed TIFFs) and normalises it. Memory
use is one batch plus the chunk cache, whatever the size of the data.

:func:`sampled_channel_stats` estimates the normalisation from a bounded, evenly spread sample
of windows instead of a pass over every pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ai4life_kit.data.normalization import ChannelMoments, normalise
from ai4life_kit.data.patches import PatchPositions
from ai4life_kit.data.views import CanonicalView
from ai4life_kit.errors import DataError

__all__ = ["LazyPatchSampler", "sampled_channel_stats", "STATS_PIXELS"]

# Pixels per channel read to estimate the normalisation of lazily loaded data: 16 M pixels put
# the mean and standard deviation within a fraction of a percent of a full pass on microscopy
# data, and read in a few seconds from a local disk.
STATS_PIXELS = 2**24


class LazyPatchSampler(PatchPositions):
    """Draw normalised ``(B, C, *patch)`` patches (and targets) by reading windows of lazy views.

    Parameters
    ----------
    images, targets
        Canonical views of the inputs (and of the targets, same shapes, or ``None``).
    patch_size
        Patch size per spatial axis.
    device
        Where the generator lives and the batches go.
    mean, std, target_mean, target_std
        Per-channel normalisation, applied to every patch as it is read.
    names
        File names for error messages.
    """

    def __init__(
        self,
        images: Sequence[CanonicalView],
        targets: Sequence[CanonicalView] | None,
        patch_size: Sequence[int],
        device: torch.device,
        mean: Sequence[float],
        std: Sequence[float],
        target_mean: Sequence[float] | None = None,
        target_std: Sequence[float] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        super().__init__([v.shape for v in images], patch_size, device, names)
        self.images, self.targets = list(images), None if targets is None else list(targets)
        self.names = list(names) if names is not None else [v.name for v in images]
        self._norm = (mean, std)
        self._target_norm = (
            target_mean if target_mean is not None else mean,
            target_std if target_std is not None else std,
        )
        # Pinned host memory lets the copy to a GPU overlap with the previous step's compute.
        self._pin = device.type == "cuda"

    def _gather(self, views: Sequence[CanonicalView], positions, norm) -> torch.Tensor:
        files, samples, origins = positions
        batch = np.empty((len(files), self.n_channels, *self.patch), dtype=np.float32)
        for i, (f, s, origin) in enumerate(zip(files, samples, origins, strict=True)):
            window = [slice(o, o + p) for o, p in zip(origin, self.patch, strict=True)]
            batch[i] = views[f].read(s, window)
        if not np.isfinite(batch).all():
            bad = next(i for i in range(len(files)) if not np.isfinite(batch[i]).all())
            raise DataError(
                f"{self.names[files[bad]]} contains NaN or Inf pixels (sample {samples[bad]}, "
                f"patch at {tuple(origins[bad])})"
            )
        # the in-memory path's normalisation, so both give identical patches
        batch = normalise(batch, *norm, len(self.patch))
        tensor = torch.from_numpy(batch)
        if self._pin:
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One batch of (input, target) patches; target is None for self-supervised data."""
        files, samples, origins = self.draw(batch_size, generator)
        positions = (files.tolist(), samples.tolist(), origins.tolist())
        x = self._gather(self.images, positions, self._norm)
        y = None if self.targets is None else self._gather(self.targets, positions, self._target_norm)
        return x, y


def _window_shape(view: CanonicalView) -> tuple[int, ...]:
    """Windows of 256 px in Y/X and 16 planes in Z: large enough to read efficiently."""
    spatial = view.shape[2:]
    limits = (16, 256, 256)[-len(spatial) :]
    return tuple(min(n, m) for n, m in zip(spatial, limits, strict=True))


def _random_windows(
    view: CanonicalView, window: tuple[int, ...], n: int, rng: np.random.Generator
) -> list[tuple[int, list[slice]]]:
    """``n`` (sample, window) pairs at uniformly random valid positions."""
    out = []
    for _ in range(n):
        sample = int(rng.integers(view.shape[0]))
        origin = [int(rng.integers(size - w + 1)) for size, w in zip(view.shape[2:], window, strict=True)]
        out.append((sample, [slice(o, o + w) for o, w in zip(origin, window, strict=True)]))
    return out


def sampled_channel_stats(
    views: Sequence[CanonicalView], names: Sequence[str] | None = None, max_pixels: int = STATS_PIXELS, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation from at most about ``max_pixels`` pixels per channel.

    Windows are spread over all views in proportion to their size (at least one per view), at
    positions from a fixed seed, so the estimate is reproducible. Views smaller than their share
    are read whole. A view that is constant in a channel is an error, as in the exact statistics.
    """
    rng = np.random.default_rng(seed)
    n_channels = views[0].shape[1]
    total_pixels = sum(v.size // n_channels for v in views)
    total = ChannelMoments(n_channels)
    for i, view in enumerate(views):
        name = names[i] if names is not None else view.name
        pixels = view.size // n_channels
        share = max_pixels * pixels / max(total_pixels, 1)
        window = _window_shape(view)
        n_windows = max(1, math.ceil(share / math.prod(window)))
        whole = n_windows * math.prod(window) >= pixels
        moments = ChannelMoments(n_channels)
        reads = [(s, None) for s in range(view.shape[0])] if whole else _random_windows(view, window, n_windows, rng)
        for s, win in reads:
            data = view.read(s, win)
            if not np.isfinite(data).all():
                raise DataError(f"{name} contains NaN or Inf pixels")
            moments.add(data)
        constant = moments.constant_channel()
        if constant is not None:
            raise DataError(f"{name} is constant in channel {constant}: nothing to learn from")
        total.merge(moments)
    return total.result()
