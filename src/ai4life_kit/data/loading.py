"""Open training images (and targets) as canonical views; load them into memory or keep them lazy.

Small data is read into memory (fastest: patches are gathered on the device). Data whose float32
size exceeds :data:`AUTO_LAZY_BYTES`, or any data with ``loading: lazy``, stays on disk and is
sampled window by window (:mod:`ai4life_kit.data.lazy`).

In memory, the float32 data are held once: read a few MiB at a time into one flat array, their
statistics computed in chunks (:func:`~ai4life_kit.data.normalization.channel_stats`),
normalised where they are, and sampled from there by :class:`PatchSampler` (on a GPU, copied to
it once). Beside them only bounded temporaries (tens of MiB) are ever allocated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ai4life_kit.data.lazy import LazyPatchSampler, sampled_channel_stats
from ai4life_kit.data.normalization import channel_stats, normalise_in_place
from ai4life_kit.data.patches import PatchSampler
from ai4life_kit.data.sources import ChunkCache, ImageSource, open_source
from ai4life_kit.data.tiff_io import resolve_inputs
from ai4life_kit.data.views import CanonicalView
from ai4life_kit.errors import DataError

__all__ = [
    "AUTO_LAZY_BYTES",
    "TrainingSet",
    "load_training_set",
    "make_sampler",
    "split_validation",
    "training_stats",
]

# Above this float32 size (inputs + targets) `loading: auto` keeps data on disk: a quarter of a
# 16 GiB laptop, and more than most GPUs would want to hold as a patch buffer. The float32 size is
# what the in-memory path needs (the data once, see the module docstring), plus _READ_BYTES.
AUTO_LAZY_BYTES = 4 * 2**30

# Bytes of a file read at a time while loading it into memory (a window in the file's dtype, and
# as much again in mapped pages of a plain TIFF while it is copied).
_READ_BYTES = 8 * 2**20

Image = np.ndarray | CanonicalView


@dataclass
class TrainingSet:
    """Canonical ``(S, C, *spatial)`` images (float32 arrays, or lazy views) with their origin.

    ``names``, ``axes``, ``dtypes``, ``shapes`` and ``paths`` describe the input files (native
    axes, dtype and shape; absolute resolved paths), ``target_paths`` / ``target_axes`` /
    ``target_dtypes`` the target files, paired by index. They are what the run directory records,
    so that packaging can find the very files again (a folder or glob argument names none).

    In memory, the arrays of the inputs are views of one flat float32 array (and those of the
    targets of another); ``normalised`` says that :func:`make_sampler` has normalised them in place.
    """

    images: list[Image]
    targets: list[Image] | None
    names: list[str]
    axes: list[str]
    dtypes: list[str]
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    target_paths: list[Path] | None = None
    target_axes: list[str] | None = None
    target_dtypes: list[str] | None = None
    normalised: bool = False

    @property
    def n_channels(self) -> int:
        return self.images[0].shape[1]

    @property
    def lazy(self) -> bool:
        return isinstance(self.images[0], CanonicalView)

    def close(self) -> None:
        """Close the files behind lazy views (a no-op in memory); the set is unusable afterwards."""
        for v in [*self.images, *(self.targets or [])]:
            if isinstance(v, CanonicalView):
                v.source.close()


def _float32_bytes(views: Sequence[CanonicalView]) -> int:
    return sum(v.size for v in views) * 4


def _read_into(view: CanonicalView, out: np.ndarray) -> None:
    """Read ``view`` into ``out`` (float32, its shape) about :data:`_READ_BYTES` at a time.

    Windows are whole samples or slabs of the first spatial axis (whole chunks of a chunked
    source, so each is decoded once); NaN and Inf are refused, naming the file.
    """
    size, *rest = view.shape[2:]
    row_bytes = view.n_channels * math.prod(rest) * view.dtype.itemsize
    rows = max(1, _READ_BYTES // max(1, row_bytes))
    chunks = getattr(view.source, "chunks", None)
    if chunks is not None:
        chunk = chunks[view.source.axes.index("ZYX"[-view.spatial_ndim])]
        rows = max(chunk, rows // chunk * chunk)
    check = view.dtype.kind == "f"
    for s in range(view.shape[0]):
        for start in range(0, size, rows):
            window = [slice(start, min(start + rows, size)), *(slice(0, n) for n in rest)]
            dst = out[s, :, start : start + rows]
            dst[...] = view.read(s, window)
            if check and not np.isfinite(dst).all():
                raise DataError(f"{view.source.path} contains NaN or Inf pixels")


def _to_memory(views: Sequence[CanonicalView]) -> list[np.ndarray]:
    """The views in memory: float32 arrays of their shapes, all views of one flat array (see :class:`PatchSampler`)."""
    flat = np.empty(sum(v.size for v in views), np.float32)
    arrays, offset = [], 0
    for v in views:
        arrays.append(flat[offset : offset + v.size].reshape(v.shape))
        _read_into(v, arrays[-1])
        offset += v.size
    return arrays


def load_training_set(
    data: Sequence[str | Path],
    target: Sequence[str | Path] | None,
    spatial_ndim: int,
    axes: str | None = None,
    loading: str = "memory",
    cache_mb: int = 512,
    target_scale: int = 1,
) -> TrainingSet:
    """Open every input (and target) file, check that they fit together, and load or keep them lazy.

    Parameters
    ----------
    data, target
        TIFF files, folders, globs or Zarr / OME-Zarr folders; targets pair up with inputs by order.
    spatial_ndim
        2 or 3.
    axes
        Axes of the files (default: their metadata).
    loading
        ``memory``, ``lazy`` or ``auto`` (lazy above :data:`AUTO_LAZY_BYTES`).
    cache_mb
        Decoded-chunk cache for lazily read Zarr / compressed TIFF data.
    target_scale
        Targets are this many times larger than their inputs in Y and X (super-resolution pairs).

    Raises
    ------
    DataError
        Missing/corrupt files, wrong axes, NaNs, different channel counts, or target files
        whose number or shapes do not match the inputs.
    """
    # Absolute and resolved: the run directory records them, and packaging may run elsewhere.
    paths = [p.resolve() for p in resolve_inputs(list(data), "--data", allow_zarr=True)]
    target_paths = [p.resolve() for p in resolve_inputs(list(target), "--target", allow_zarr=True)] if target else None
    if target_paths is not None and len(target_paths) != len(paths):
        raise DataError(f"--target has {len(target_paths)} file(s) but --data has {len(paths)}; they must pair up")
    cache = ChunkCache(cache_mb * 2**20)
    images, targets, names, all_axes, dtypes, shapes = [], [], [], [], [], []
    target_axes, target_dtypes = [], []
    opened: list[ImageSource] = []
    try:
        for i, path in enumerate(paths):
            src = open_source(path, axes, spatial_ndim, cache)
            opened.append(src)
            images.append(CanonicalView(src, spatial_ndim))
            names.append(path.name)
            all_axes.append(src.axes)
            dtypes.append(str(src.dtype))
            shapes.append(tuple(src.shape))
            if target_paths is not None:
                tgt = open_source(target_paths[i], axes, spatial_ndim, cache)
                opened.append(tgt)
                expected = tuple(n * target_scale if a in "YX" else n for a, n in zip(src.axes, src.shape, strict=True))
                if tgt.shape != expected:
                    scaled = f" ({target_scale}x larger in Y and X: {expected})" if target_scale > 1 else ""
                    raise DataError(
                        f"target {target_paths[i].name} has shape {tgt.shape} "
                        f"but input {path.name} has shape {src.shape}{scaled}"
                    )
                targets.append(CanonicalView(tgt, spatial_ndim))
                target_axes.append(tgt.axes)
                target_dtypes.append(str(tgt.dtype))
        channels = {v.shape[1] for v in images}
        if len(channels) > 1:
            raise DataError(f"input files have different channel counts {sorted(channels)}; train one model per kind")
        lazy = loading == "lazy" or (loading == "auto" and _float32_bytes(images + targets) > AUTO_LAZY_BYTES)
        if not lazy:
            images = _to_memory(images)
            targets = _to_memory(targets) if targets else targets
            for source in opened:  # read whole: the files are not needed any more
                source.close()
    except BaseException:
        # Closed here, not left to the sources' __del__: with the exception's traceback they are freed
        # by the cycle collector, which may finalise a TIFF's file object first (a ResourceWarning).
        for source in opened:
            source.close()
        raise
    paired = target_paths is not None
    return TrainingSet(
        images,
        targets if paired else None,
        names,
        all_axes,
        dtypes,
        shapes,
        paths=paths,
        target_paths=target_paths,
        target_axes=target_axes if paired else None,
        target_dtypes=target_dtypes if paired else None,
    )


def training_stats(images: Sequence[Image], names: Sequence[str]) -> tuple[list[float], list[float]]:
    """Exact per-channel statistics of arrays in memory; a bounded sample's for lazy views."""
    if isinstance(images[0], CanonicalView):
        return sampled_channel_stats(images, names)
    return channel_stats(images, names)


def make_sampler(
    ts: TrainingSet, norm: dict[str, list[float]], patch: Sequence[int], device: torch.device
) -> PatchSampler | LazyPatchSampler:
    """The patch sampler for a training or validation set, normalised with ``norm``.

    Arrays in memory are normalised in place (no second copy of the data): afterwards ``ts``
    holds normalised data (``ts.normalised``), and a second call for it (or for a part of it
    split off afterwards) is an error.
    """
    if ts.lazy:
        return LazyPatchSampler(
            ts.images,
            ts.targets,
            patch,
            device,
            norm["mean"],
            norm["std"],
            norm["target_mean"],
            norm["target_std"],
            ts.names,
        )
    if ts.normalised:
        raise ValueError("make_sampler: this training set is normalised already (by an earlier make_sampler)")
    nd = len(patch)
    for a in ts.images:
        normalise_in_place(a, norm["mean"], norm["std"], nd)
    for a in ts.targets or []:
        normalise_in_place(a, norm["target_mean"], norm["target_std"], nd)
    ts.normalised = True
    return PatchSampler(ts.images, ts.targets, patch, device, ts.names)


def _take(img: Image, axis: int, start: int, stop: int) -> Image:
    """``img[start:stop]`` along canonical ``axis``, for arrays and lazy views alike."""
    if isinstance(img, CanonicalView):
        return img.narrow(axis, start, stop)
    return img[(slice(None),) * axis + (slice(start, stop),)]


def split_validation(
    ts: TrainingSet, val_fraction: float, patch: Sequence[int]
) -> tuple[TrainingSet, TrainingSet | None]:
    """Hold out whole files if there are several, else the last samples, else a strip of the image.

    Returns ``(train, val)``; ``val`` is None when ``val_fraction`` is 0 (validation then uses
    training patches).
    """
    if val_fraction <= 0:
        return ts, None

    def subset(imgs, tgts, files: slice = slice(None)) -> TrainingSet:
        """The images ``imgs`` (and ``tgts``) of the input files ``files`` of ``ts``."""

        def pick(values):
            return None if values is None else values[files]

        return TrainingSet(
            imgs,
            tgts,
            ts.names[files],
            ts.axes[files],
            ts.dtypes[files],
            ts.shapes[files],
            paths=ts.paths[files],
            target_paths=pick(ts.target_paths),
            target_axes=pick(ts.target_axes),
            target_dtypes=pick(ts.target_dtypes),
            normalised=ts.normalised,
        )

    n = len(ts.images)
    if n > 1:
        n_val = max(1, round(n * val_fraction))
        n_val = min(n_val, n - 1)
        train_files, val_files = slice(None, n - n_val), slice(n - n_val, None)
        tr = subset(ts.images[train_files], ts.targets[train_files] if ts.targets else None, train_files)
        va = subset(ts.images[val_files], ts.targets[val_files] if ts.targets else None, val_files)
        return tr, va
    img = ts.images[0]
    tgt = ts.targets[0] if ts.targets else None
    if img.shape[0] > 1:
        n_val = min(max(1, round(img.shape[0] * val_fraction)), img.shape[0] - 1)
        cut = img.shape[0] - n_val
        n_s = img.shape[0]
        tr = subset([_take(img, 0, 0, cut)], [_take(tgt, 0, 0, cut)] if tgt is not None else None)
        va = subset([_take(img, 0, cut, n_s)], [_take(tgt, 0, cut, n_s)] if tgt is not None else None)
        return tr, va
    # One image: a strip along the longest spatial axis, at least one patch thick.
    spatial = img.shape[2:]
    axis = int(np.argmax([s / p for s, p in zip(spatial, patch, strict=True)]))
    size, p = spatial[axis], patch[axis]
    strip = max(p, round(size * val_fraction))
    if size - strip < p:
        raise DataError(
            f"{ts.names[0]}: spatial size {tuple(spatial)} is too small for patches of {tuple(patch)} plus a "
            f"validation strip; use a smaller --patch-size, more data, or --val-fraction 0"
        )
    ax = 2 + axis
    tr_img = _take(img, ax, 0, size - strip)
    va_img = _take(img, ax, size - strip, size)
    tr_t = [_take(tgt, ax, 0, size - strip)] if tgt is not None else None
    va_t = [_take(tgt, ax, size - strip, size)] if tgt is not None else None
    return subset([tr_img], tr_t), subset([va_img], va_t)
