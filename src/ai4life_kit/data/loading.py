"""Load training images (and targets) from TIFFs into canonical arrays, and split off validation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ai4life_kit.data.axes import Layout
from ai4life_kit.data.tiff_io import read_image, resolve_inputs
from ai4life_kit.errors import DataError

__all__ = ["TrainingSet", "load_training_set", "split_validation"]


@dataclass
class TrainingSet:
    """Canonical ``(S, C, *spatial)`` float32 arrays with their origin."""

    images: list[np.ndarray]
    targets: list[np.ndarray] | None
    names: list[str]
    axes: list[str]
    dtypes: list[str]
    shapes: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def n_channels(self) -> int:
        return self.images[0].shape[1]


def load_training_set(
    data: Sequence[str | Path],
    target: Sequence[str | Path] | None,
    spatial_ndim: int,
    axes: str | None = None,
) -> TrainingSet:
    """Read every input (and target) file; check that they fit together.

    Raises
    ------
    DataError
        Missing/corrupt files, wrong axes, NaNs, different channel counts, or target files
        whose number or shapes do not match the inputs.
    """
    paths = resolve_inputs(list(data), "--data")
    target_paths = resolve_inputs(list(target), "--target") if target else None
    if target_paths is not None and len(target_paths) != len(paths):
        raise DataError(f"--target has {len(target_paths)} file(s) but --data has {len(paths)}; they must pair up")
    images, targets, names, all_axes, dtypes, shapes = [], [], [], [], [], []
    for i, path in enumerate(paths):
        img = read_image(path, axes, spatial_ndim)
        layout = Layout.of(img.data.shape, img.axes, spatial_ndim)
        images.append(layout.to_canonical(img.data))
        names.append(path.name)
        all_axes.append(img.axes)
        dtypes.append(str(img.dtype))
        shapes.append(tuple(img.data.shape))
        if target_paths is not None:
            tgt = read_image(target_paths[i], axes, spatial_ndim)
            if tgt.data.shape != img.data.shape:
                raise DataError(
                    f"target {target_paths[i].name} has shape {tgt.data.shape} but input {path.name} "
                    f"has shape {img.data.shape}"
                )
            targets.append(Layout.of(tgt.data.shape, tgt.axes, spatial_ndim).to_canonical(tgt.data))
    channels = {a.shape[1] for a in images}
    if len(channels) > 1:
        raise DataError(f"input files have different channel counts {sorted(channels)}; train one model per kind")
    return TrainingSet(images, targets if target_paths is not None else None, names, all_axes, dtypes, shapes)


def split_validation(
    ts: TrainingSet, val_fraction: float, patch: Sequence[int]
) -> tuple[TrainingSet, TrainingSet | None]:
    """Hold out whole files if there are several, else the last samples, else a strip of the image.

    Returns ``(train, val)``; ``val`` is None when ``val_fraction`` is 0 (validation then uses
    training patches).
    """
    if val_fraction <= 0:
        return ts, None

    def subset(imgs, tgts, names):
        return TrainingSet(imgs, tgts, names, ts.axes, ts.dtypes, ts.shapes)

    n = len(ts.images)
    if n > 1:
        n_val = max(1, round(n * val_fraction))
        n_val = min(n_val, n - 1)
        tr = subset(ts.images[:-n_val], ts.targets[:-n_val] if ts.targets else None, ts.names[:-n_val])
        va = subset(ts.images[-n_val:], ts.targets[-n_val:] if ts.targets else None, ts.names[-n_val:])
        return tr, va
    img = ts.images[0]
    tgt = ts.targets[0] if ts.targets else None
    if img.shape[0] > 1:
        n_val = min(max(1, round(img.shape[0] * val_fraction)), img.shape[0] - 1)
        cut = img.shape[0] - n_val
        tr = subset([img[:cut]], [tgt[:cut]] if tgt is not None else None, ts.names)
        va = subset([img[cut:]], [tgt[cut:]] if tgt is not None else None, ts.names)
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
    tr_img = np.take(img, range(0, size - strip), axis=ax)
    va_img = np.take(img, range(size - strip, size), axis=ax)
    tr_t = [np.take(tgt, range(0, size - strip), axis=ax)] if tgt is not None else None
    va_t = [np.take(tgt, range(size - strip, size), axis=ax)] if tgt is not None else None
    return subset([tr_img], tr_t, ts.names), subset([va_img], va_t, ts.names)
