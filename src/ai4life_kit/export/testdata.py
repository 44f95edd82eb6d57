"""Test (and sample) tensors for a package: a crop of valid size from the run's training data.

bioimage.io accepts spatial sizes ``min + n * step`` only; ``min = 2 * halo + step`` is the
smallest size that leaves an output after the halo is cropped. The crop is taken from the
centre of the middle sample of the first usable training file that ``training_summary.json``
records (TIFF or Zarr / OME-Zarr, opened lazily: only the crop's window is read, however large
the file); an image smaller than ``min`` is mirror-padded.

A synthetic input (seeded noise with the training statistics) is used only when asked for
(``--synthetic-test-data``): bioimage.io's reviewers reject fabricated test tensors, so when no
training file can be read any more and no ``--test-image`` is given, packaging stops with an
error that says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ai4life_kit.errors import DataError, UserInputError
from ai4life_kit.export.rundir import RunInfo, min_size

__all__ = ["TestInput", "TrainingFile", "min_size", "valid_size", "training_files", "read_crop", "make_test_input"]

# Largest test-tensor side per spatial axis (keeps `bioimageio test` quick, the cover readable).
_CAP_2D = 256
# Largest test-tensor depth of an isotropic package for thin volumes (no z halo).
_CAP_THIN_Z = 24
# Decoded-chunk budget for reading the crop of a chunked file: a crop spans a few chunks only.
_CACHE_BYTES = 64 * 2**20


@dataclass
class TestInput:
    """A raw test input in ``b, c, (z), y, x`` order plus where it came from."""

    array: np.ndarray
    source: str
    """Human-readable origin, e.g. ``centre crop [y 0:256, x 10:266] of img.tif``."""
    synthetic: bool = False
    padded: bool = False


class TrainingFile(NamedTuple):
    """A training input file found again, with the axes to open it with (None: its metadata)."""

    path: Path
    axes: str | None


def valid_size(available: int, smallest: int, step: int, cap: int) -> int:
    """Largest size ``smallest + n * step`` that fits in ``min(available, cap)`` (at least ``smallest``)."""
    limit = min(available, max(cap, smallest))
    if limit < smallest:
        return smallest
    return smallest + ((limit - smallest) // step) * step


def _sizes(run: RunInfo, space: Sequence[int]) -> list[int]:
    """The test crop's size per spatial axis: valid, at most 256 in 2D and four steps over the minimum in 3D."""
    axes = run.package_axes
    # An isotropic package without a z halo is made for thin volumes: its test input takes them whole.
    caps = [_CAP_2D if len(axes) == 2 else (a.min + 4 * a.step if a.halo else _CAP_THIN_Z) for a in axes]
    return [valid_size(n, a.min, a.step, cap) for n, a, cap in zip(space, axes, caps, strict=True)]


# -- finding the training files again ---------------------------------------------------------
def _entry_name(value: Any) -> str | None:
    """The file name of a ``files`` entry: a string, or a mapping with a path-like key."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for key in ("path", "file", "source", "name"):
            if isinstance(value.get(key), str):
                return value[key]
    return None


def _recorded(run: RunInfo) -> tuple[list[str], dict[str, str]]:
    """The training inputs ``training_summary.json`` names, and the axes it recorded per file.

    Runs of this version record every resolved file with its absolute path and axes
    (``inputs``); older runs recorded the raw ``--data`` arguments (``files``: files, folders or
    globs, maybe relative) and per-file names and axes (``inputs``). Axes are keyed by absolute
    path where known, else by file name.
    """
    s = run.summary
    raw_inputs = s.get("inputs")
    inputs = [i for i in raw_inputs if isinstance(i, dict)] if isinstance(raw_inputs, list) else []
    axes: dict[str, str] = {}
    for entry in inputs:
        if isinstance(entry.get("axes"), str):
            for key in ("name", "path"):
                if isinstance(entry.get(key), str):
                    axes[entry[key]] = entry["axes"]
    names = [entry["path"] for entry in inputs if isinstance(entry.get("path"), str)]
    if not names:
        files = s.get("files")
        names = [n for n in (_entry_name(f) for f in files) if n] if isinstance(files, list) else []
    return names, axes


def _resolve(run: RunInfo, name: str) -> list[Path]:
    """The image files a recorded name stands for (a folder or glob: all it holds); [] if gone.

    A relative name (older runs) is tried against the working directory, the run directory and
    its parent, as training was most likely started from one of them.
    """
    from ai4life_kit.data.tiff_io import resolve_inputs

    p = Path(name)
    candidates = [p] if p.is_absolute() else [p, run.run_dir / p, run.run_dir.parent / p]
    for candidate in candidates:
        try:
            return resolve_inputs([candidate], "training data", allow_zarr=True)
        except DataError:
            continue
    return []


def _locate(run: RunInfo) -> tuple[list[TrainingFile], list[str]]:
    """Training files that still exist (in recorded order) and the recorded names that do not."""
    names, axes = _recorded(run)
    found: list[TrainingFile] = []
    seen: set[Path] = set()
    missing: list[str] = []
    for name in names:
        paths = _resolve(run, name)
        if not paths:
            missing.append(name)
        for path in paths:
            key = path.resolve()
            if key in seen:
                continue
            seen.add(key)
            file_axes = axes.get(str(path)) or axes.get(str(key)) or axes.get(path.name) or run.spec.data.axes
            found.append(TrainingFile(path, file_axes))
    return found, missing


def training_files(run: RunInfo) -> list[TrainingFile]:
    """The training input files recorded in ``training_summary.json`` that still exist."""
    return _locate(run)[0]


# -- reading the crop -------------------------------------------------------------------------
def _centre_window(shape: Sequence[int], sizes: Sequence[int]) -> tuple[list[slice], list[tuple[int, int]], bool]:
    """Centre window of ``sizes`` in ``shape`` (all of an axis that is smaller) and the pads to ``sizes``."""
    window: list[slice] = []
    pads: list[tuple[int, int]] = []
    for n, s in zip(shape, sizes, strict=True):
        if n >= s:
            start = (n - s) // 2
            window.append(slice(start, start + s))
            pads.append((0, 0))
        else:
            window.append(slice(0, n))
            before = (s - n) // 2
            pads.append((before, s - n - before))
    return window, pads, any(p != (0, 0) for p in pads)


def read_crop(run: RunInfo, path: Path, axes: str | None) -> TestInput:
    """The centre crop of valid size of ``path``'s middle sample, reading only that window.

    Raises
    ------
    DataError
        The file cannot be opened, its axes do not fit, it has the wrong number of channels,
        or the crop holds NaN / Inf pixels.
    """
    from ai4life_kit.data.sources import ChunkCache, open_source
    from ai4life_kit.data.views import CanonicalView

    dims = run.package_dims
    source = open_source(path, axes, dims, ChunkCache(_CACHE_BYTES))
    try:
        view = CanonicalView(source, dims)
        n_samples, n_channels, *space = view.shape
        if n_channels != run.in_channels:
            raise DataError(f"{path} has {n_channels} channels but the model expects {run.in_channels}")
        sizes = _sizes(run, space)
        window, pads, padded = _centre_window(space, sizes)
        # The middle sample of a stack or time series is likelier to show the specimen than the first.
        sample = n_samples // 2
        crop = view.read(sample, window).astype(np.float32)
    finally:
        source.close()
    if not np.isfinite(crop).all():
        raise DataError(f"{path}: the test crop contains NaN or Inf pixels")
    if padded:
        # numpy mirrors repeatedly when the pad is wider than the image; one pixel cannot mirror
        mode = "reflect" if min(crop.shape[1:]) > 1 else "edge"
        crop = np.pad(crop, [(0, 0), *pads], mode=mode)
    where = ", ".join(f"{a} {w.start}:{w.stop}" for a, w in zip("zyx"[-dims:], window, strict=True))
    of_sample = f" of sample {sample} of {n_samples}" if n_samples > 1 else ""
    note = f"centre crop [{where}]{of_sample} of {path.name}" + (
        " (mirror-padded to the minimum size)" if padded else ""
    )
    return TestInput(array=np.ascontiguousarray(crop[None]), source=note, padded=padded)


def _synthetic(run: RunInfo) -> TestInput:
    rng = np.random.default_rng(0)
    shape = (1, run.in_channels, *(a.min for a in run.package_axes))
    arr = rng.standard_normal(shape).astype(np.float32)
    for c in range(run.in_channels):
        arr[:, c] = arr[:, c] * run.std[c] + run.mean[c]
    return TestInput(
        array=arr,
        source="synthetic noise with the training mean and standard deviation (--synthetic-test-data), "
        "not a microscopy image",
        synthetic=True,
    )


def _listed(items: Sequence[str], n: int = 3) -> str:
    return "; ".join(items[:n]) + (f"; and {len(items) - n} more" if len(items) > n else "")


def make_test_input(
    run: RunInfo, image: Path | None = None, axes: str | None = None, *, synthetic: bool = False
) -> TestInput:
    """The raw test input: from ``image`` if given, else from the run's training data.

    Parameters
    ----------
    run
        The run directory being packaged.
    image
        A TIFF or Zarr image to crop instead of the training data (``--test-image``).
    axes
        Axes of ``image`` (default: the training spec's, else the file's metadata).
    synthetic
        Use seeded synthetic noise with the training statistics (``--synthetic-test-data``).

    Raises
    ------
    UserInputError
        ``image`` and ``synthetic`` both given.
    DataError
        ``image`` cannot be used, or no training file recorded by the run can be used any more
        (the message names them and the two ways out).
    """
    if synthetic:
        if image is not None:
            raise UserInputError("--test-image and --synthetic-test-data exclude each other: give one of them")
        return _synthetic(run)
    if image is not None:
        from ai4life_kit.data.formats import is_zarr_path

        image = Path(image)
        if not (image.is_file() or is_zarr_path(image)):
            raise DataError(f"--test-image {image} does not exist")
        return read_crop(run, image, axes or run.spec.data.axes)
    found, missing = _locate(run)
    problems = [f"{name} not found" for name in missing]
    for file in found:
        try:
            return read_crop(run, file.path, file.axes)
        except DataError as exc:
            problems.append(str(exc))
    what = _listed(problems) if problems else "training_summary.json records no training files"
    raise DataError(
        f"no training image of {run.run_dir} can be read for the test tensors ({what}); pass --test-image FILE "
        "(an image like the training data), or --synthetic-test-data to package synthetic noise instead"
    )
