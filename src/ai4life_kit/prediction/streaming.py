"""Prediction one batch of tiles at a time: the one prediction path, in memory and out of core.

The input is a :class:`~ai4life_kit.data.views.CanonicalView` (lazy on disk, or an array in
memory) and the output a writable one (a TIFF written through short-lived memory maps, a Zarr
array, or an array), so memory holds only a batch of tiles and the model beyond input and
output. Each tile is read as its window, clipped to the image; the few pixels past the image's
end (up to the size multiple) are filled by index reflection exactly as
``np.pad(..., mode="symmetric")`` fills them.

Outputs are created under a temporary name next to their final path and renamed into place
only when complete: an interrupted run never leaves a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ai4life_kit.data.formats import require_zarr
from ai4life_kit.data.sources import ImageSource
from ai4life_kit.data.targets import MemmapTiffTarget, ZarrTarget
from ai4life_kit.data.views import CanonicalView
from ai4life_kit.errors import DataError
from ai4life_kit.fileio import atomic_folder, atomic_path
from ai4life_kit.prediction.tiling import TTA, Job, TileGrid, run_tiles, symmetric_index, tile_jobs

__all__ = [
    "OUTPUT_FORMATS",
    "create_output",
    "output_chunks",
    "output_format",
    "predict_view",
    "read_padded_tile",
]

OUTPUT_FORMATS = {".tif": "tif", ".tiff": "tif", ".zarr": "zarr"}


def read_padded_tile(view: CanonicalView, sample: int, origin: Sequence[int], grid: TileGrid) -> np.ndarray:
    """One network input ``(C, *grid.tile)`` of the sample mirrored past its end, in the view's dtype.

    ``origin`` is in image coordinates (as :meth:`TileGrid.origins` gives them). Only the
    bounding box of the pixels the tile needs is read; reflected parts are gathered from it.
    """
    index = [symmetric_index(o, o + t, n) for o, t, n in zip(origin, grid.tile, grid.shape, strict=True)]
    lo = [int(i.min()) for i in index]
    hi = [int(i.max()) + 1 for i in index]
    block = view.read(sample, [slice(a, b) for a, b in zip(lo, hi, strict=True)])
    for axis, (i, a, b) in enumerate(zip(index, lo, hi, strict=True)):
        if not (b - a == len(i) and i[0] == a):  # not a plain run: the tile reaches past the border
            block = np.take(block, i - a, axis=axis + 1)
    return block


def predict_view(
    forward: Callable[[torch.Tensor], torch.Tensor],
    view: CanonicalView,
    out: CanonicalView,
    grid: TileGrid,
    batch_size: int,
    device: torch.device,
    tta: TTA = False,
    progress: Callable[[int], None] | None = None,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    finish: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Predict every tile of ``view`` and write its core into ``out``, one batch in memory at a time.

    Parameters
    ----------
    forward
        Network on a ``(B, C, *tile)`` tensor.
    view, out
        Input and (writable) output, both canonical ``(S, C, *spatial)`` of the same size.
    grid
        From :func:`~ai4life_kit.prediction.tiling.plan_grid` for ``view.shape[2:]``.
    tta
        As in :func:`~ai4life_kit.prediction.tiling.run_tiles`: ``True`` for all 8 flips/rotations,
        or the transforms to average.
    prepare
        Raw tile ``(C, *tile)`` (view dtype) to float32 network input (normalisation);
        default: a float32 cast.
    finish
        Core prediction ``(C_out, *core)`` to what is written (de-normalisation).

    Raises
    ------
    DataError
        When a float input has NaN or Inf pixels (found tile by tile, so possibly late; the
        caller's temporary output is then discarded).
    """
    if tuple(view.shape[2:]) != grid.shape or out.shape[0] != view.shape[0] or out.shape[2:] != view.shape[2:]:
        raise ValueError(f"input {view.shape}, output {out.shape} and grid {grid.shape} do not match")
    check_finite = view.dtype.kind == "f"

    def read_tile(job: Job) -> np.ndarray:
        raw = read_padded_tile(view, job[0], job[1], grid)
        if check_finite and not np.isfinite(raw).all():
            raise DataError(f"{view.source.path} contains NaN or Inf pixels")
        x = raw.astype(np.float32, copy=False)
        return x if prepare is None else prepare(x)

    writer = _BackgroundWriter(out, depth=2 * batch_size)

    def write_core(job: Job, window: tuple[slice, ...], y: np.ndarray) -> None:
        writer.put(job[0], window, y if finish is None else finish(y))

    try:
        run_tiles(
            forward, tile_jobs(view.shape[0], grid), read_tile, write_core, grid, batch_size, device, tta, progress
        )
    finally:
        writer.close()


class _BackgroundWriter:
    """Writes tile cores on one background thread, so disk I/O overlaps the next batch's compute.

    At most ``depth`` cores wait in the queue (bounded memory). The first write error is
    re-raised in the caller's thread by the next :meth:`put` or by :meth:`close`.
    """

    def __init__(self, out: CanonicalView, depth: int) -> None:
        self._out = out
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ai4life-kit-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after an error, drain the queue so put() never blocks
                try:
                    self._out.write(*item)
                except BaseException as exc:  # handed to the caller's thread by put() or close()
                    self._error = exc

    def put(self, sample: int, window: tuple[slice, ...], data: np.ndarray) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((sample, window, data))

    def close(self) -> None:
        """Wait until everything queued is written; re-raise a write error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


# -- outputs ------------------------------------------------------------------------------------
def output_format(path: str | Path) -> str:
    """``"tif"`` or ``"zarr"`` from an output path's suffix."""
    fmt = OUTPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(f"output {path} must end in .tif, .tiff or .zarr")
    return fmt


def output_chunks(view: CanonicalView, grid: TileGrid) -> tuple[int, ...]:
    """Native chunk shape whose spatial chunks are the tile cores: each tile writes whole chunks.

    Batch axes get chunks of 1 (one sample per tile), ``C`` all channels.
    """
    source = view.source
    core = dict(zip(view._space_letters, grid.core, strict=True))
    chunks = []
    for letter, n in zip(source.axes, source.shape, strict=True):
        if letter == "C":
            chunks.append(n)
        elif letter in core:
            chunks.append(min(core[letter], n))
        else:
            chunks.append(1)
    return tuple(chunks)


@contextlib.contextmanager
def create_output(
    path: str | Path,
    shape: tuple[int, ...],
    axes: str,
    overwrite: bool = False,
    chunks: tuple[int, ...] | None = None,
) -> Iterator[ImageSource]:
    """A writable float32 image that appears at ``path`` (``.tif``/``.tiff`` or ``.zarr``) on success.

    Yields a :class:`~ai4life_kit.data.targets.MemmapTiffTarget` or
    :class:`~ai4life_kit.data.targets.ZarrTarget` living under a temporary name in the same
    folder; leaving the ``with`` block normally renames it to ``path``, an exception deletes it.
    ``chunks`` (native axes) applies to Zarr only.

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false (checked before anything is created).
    DataError
        Unknown suffix, or Zarr requested without the zarr package.
    """
    path = Path(path)
    if output_format(path) == "zarr":
        require_zarr(path)  # fail before creating anything
        with atomic_folder(path, overwrite) as tmp:
            yield ZarrTarget.create(tmp, shape, axes, chunks)
    else:
        with atomic_path(path, overwrite) as tmp:
            yield MemmapTiffTarget.create(tmp, shape, axes)
