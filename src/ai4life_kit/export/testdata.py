"""Test (and sample) tensors for a package: a crop of valid size from the run's training data.

bioimage.io accepts spatial sizes ``min + n * step`` only; ``min = 2 * halo + step`` is the
smallest size that leaves an output after the halo is cropped. The crop is taken from the
centre of the first usable training image; an image smaller than ``min`` is mirror-padded.
When no training image can be read any more (moved, deleted), a seeded synthetic image with the
training statistics is used and the documentation says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.errors import Ai4LifeKitError, DataError
from ai4life_kit.export.rundir import RunInfo

__all__ = ["TestInput", "min_size", "valid_size", "training_files", "make_test_input"]

TIFF_SUFFIXES = (".tif", ".tiff")
# Largest test-tensor side per spatial axis (keeps `bioimageio test` quick, the cover readable).
_CAP_2D = 256


@dataclass
class TestInput:
    """A raw test input in ``b, c, (z), y, x`` order plus where it came from."""

    array: np.ndarray
    source: str
    """Human-readable origin, e.g. ``crop [0:256, 10:266] of data/img.tif``."""
    synthetic: bool = False
    padded: bool = False


def min_size(halo: int, step: int) -> int:
    """Smallest valid spatial size: more than ``2 * halo`` and a multiple of ``step``."""
    return 2 * halo + step


def valid_size(available: int, halo: int, step: int, cap: int) -> int:
    """Largest size ``min + n * step`` that fits in ``min(available, cap)`` (at least ``min``)."""
    smallest = min_size(halo, step)
    limit = min(available, max(cap, smallest))
    if limit < smallest:
        return smallest
    return smallest + ((limit - smallest) // step) * step


def _cap(run: RunInfo) -> int:
    smallest = min_size(run.halo, run.step)
    return _CAP_2D if run.dims == 2 else smallest + 4 * run.step


def _collect_paths(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        if value.lower().endswith(TIFF_SUFFIXES):
            out.append(value)
    elif isinstance(value, dict):
        for key in ("path", "file", "source", "name"):
            if isinstance(value.get(key), str):
                _collect_paths(value[key], out)
                return
        for v in value.values():
            _collect_paths(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect_paths(v, out)


def training_files(run: RunInfo) -> list[Path]:
    """Existing training input files named in ``training_summary.json`` (``files`` and friends)."""
    names: list[str] = []
    for key in ("files", "train_files"):
        if key in run.summary:
            _collect_paths(run.summary[key], names)
    found: list[Path] = []
    for name in names:
        p = Path(name)
        candidates = [p] if p.is_absolute() else [p, run.run_dir / p, run.run_dir.parent / p]
        for c in candidates:
            if c.is_file() and c not in found:
                found.append(c)
                break
    return found


def _crop_or_pad(arr: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, list[tuple[int, int]], bool]:
    """Centre-crop the trailing spatial axes of ``arr`` (``c, *space``) to ``sizes``; pad if smaller."""
    slices: list[slice] = [slice(None)]
    ranges: list[tuple[int, int]] = []
    pad = [(0, 0)]
    padded = False
    for n, s in zip(arr.shape[1:], sizes, strict=True):
        if n >= s:
            start = (n - s) // 2
            slices.append(slice(start, start + s))
            ranges.append((start, start + s))
            pad.append((0, 0))
        else:
            slices.append(slice(None))
            ranges.append((0, n))
            before = (s - n) // 2
            pad.append((before, s - n - before))
            padded = True
    out = arr[tuple(slices)]
    if padded:
        # numpy mirrors repeatedly when the pad is wider than the image
        out = np.pad(out, pad, mode="reflect" if min(out.shape[1:]) > 1 else "edge")
    return np.ascontiguousarray(out, dtype=np.float32), ranges, padded


def _from_image(run: RunInfo, path: Path, axes: str | None) -> TestInput:
    from ai4life_kit.data.axes import Layout
    from ai4life_kit.data.tiff_io import read_image

    img = read_image(path, axes=axes, spatial_ndim=run.dims)
    canonical = Layout.of(img.data.shape, img.axes, run.dims).to_canonical(img.data)
    if canonical.shape[1] != run.in_channels:
        raise DataError(f"{path} has {canonical.shape[1]} channels but the model expects {run.in_channels}")
    sample = canonical[0]
    cap = _cap(run)
    sizes = [valid_size(n, run.halo, run.step, cap) for n in sample.shape[1:]]
    crop, ranges, padded = _crop_or_pad(sample, sizes)
    where = ", ".join(f"{a}:{b}" for a, b in ranges)
    note = f"centre crop [{where}] of {path.name}" + (" (mirror-padded to the minimum size)" if padded else "")
    return TestInput(array=crop[None], source=note, padded=padded)


def _synthetic(run: RunInfo) -> TestInput:
    rng = np.random.default_rng(0)
    size = min_size(run.halo, run.step)
    shape = (1, run.in_channels) + (size,) * run.dims
    arr = rng.standard_normal(shape).astype(np.float32)
    for c in range(run.in_channels):
        arr[:, c] = arr[:, c] * run.std[c] + run.mean[c]
    return TestInput(
        array=arr, source="synthetic noise with the training mean/std (no training image found)", synthetic=True
    )


def make_test_input(run: RunInfo, image: Path | None = None, axes: str | None = None) -> TestInput:
    """The raw test input: from ``image`` if given, else from the run's training data.

    An explicitly given ``image`` that cannot be used is an error; training files that cannot be
    used are skipped, and a synthetic input is the last resort.
    """
    if image is not None:
        return _from_image(run, Path(image), axes or run.spec.data.axes)
    for path in training_files(run):
        try:
            return _from_image(run, path, run.spec.data.axes)
        except Ai4LifeKitError:
            continue
    return _synthetic(run)
