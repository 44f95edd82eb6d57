"""Tiled prediction with a halo: any image size, bounded memory, no seams, no wasted border.

One spatial axis of length ``n``, padded at its end to ``N`` (the next multiple of
``m = 2**depth``, mirrored), tiles of ``t`` and a halo ``h`` (``t``, ``h`` multiples of ``m``)::

    image (n), padded to N:  |................ image ................|x|
    tile 0:                  |=== core ===|hhh|
    tile 1:                         |hhh|=== core ===|hhh|
    last tile:                                   |hhh|=== core ===|x|

The first tile starts at the image's first pixel and the last ends at ``N``: at the image's
borders a tile sees what the whole image would (the network's own zero padding), inside it each
core keeps ``h`` pixels of context on the sides where another tile takes over. Each output pixel
depends only on input pixels within the receptive-field radius (<= ``h``), so every tiling gives
the prediction of the whole (padded) image to float rounding. An axis that fits in one tile runs
as it is, padded to ``N`` only: a 60 x 60 x 48 volume costs 60 x 60 x 48 voxels, not
124 x 124 x 112 with a halo on every side. Where an axis needs several tiles, they share its
length evenly (see :func:`plan_grid`).

bioimage.io's blockwise prediction (bioimageio.core, ilastik) pads the image's borders with a
mirrored halo instead (``border="mirror"`` here); that changes the outermost ``h`` pixels only
(measured in ``benchmarks/bench_predict_cpu.py``); whole-image prediction there is what the kit computes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ai4life_kit.errors import UserInputError
from ai4life_kit.models import round_up

__all__ = [
    "BORDERS",
    "TTA",
    "Job",
    "TTATransform",
    "TileGrid",
    "core_window",
    "plan_grid",
    "run_tiles",
    "symmetric_index",
    "tile_jobs",
    "tta_transforms",
]


@dataclass(frozen=True)
class AxisTiles:
    """The tiles along one spatial axis, in image coordinates."""

    length: int  # image size
    tile: int  # network input size
    starts: tuple[int, ...]  # where each tile starts (its end may be padding past the image)
    cores: tuple[tuple[int, int], ...]  # [lo, hi) each tile writes, clipped to the image

    @property
    def padded(self) -> int:
        """End of the last tile: the image mirrored past its end up to here."""
        return self.starts[-1] + self.tile


@dataclass(frozen=True)
class TileGrid:
    """Tile geometry along each spatial axis."""

    shape: tuple[int, ...]  # image size per axis
    tile: tuple[int, ...]  # network input size per axis
    halo: int  # context kept where two tiles meet
    axes: tuple[AxisTiles, ...]
    batch_cap: int | None = None  # most tiles per batch (tiles larger than the default); None: the caller's

    def tiles_per_batch(self, batch_size: int) -> int:
        """How many tiles go through the network at once for a requested ``batch_size``."""
        return max(1, min(batch_size, self.batch_cap)) if self.batch_cap is not None else batch_size

    @property
    def counts(self) -> tuple[int, ...]:
        """Tiles per axis."""
        return tuple(len(a.starts) for a in self.axes)

    @property
    def core(self) -> tuple[int, ...]:
        """The largest core per axis (interior tiles'; chunk sizes of streamed outputs)."""
        return tuple(max(hi - lo for lo, hi in a.cores) for a in self.axes)

    @property
    def padded(self) -> tuple[int, ...]:
        return tuple(a.padded for a in self.axes)

    def origins(self) -> Iterator[tuple[int, ...]]:
        """Start of each tile in image coordinates (before 0 and past the image: mirrored padding)."""
        return itertools.product(*(a.starts for a in self.axes))

    def __len__(self) -> int:
        return math.prod(self.counts)


def _axis_tiles(n: int, want: int, halo: int, multiple: int, before: int) -> AxisTiles:
    """Tiles of at most ``want`` covering ``[0, n)``: one if the padded axis fits, else as few as can, evenly.

    ``before`` mirrored pixels precede the image (and as many follow it): 0 for the ``network``
    border, ``halo`` for ``mirror``. The tiles are laid over that extended axis, padded at its end
    to the size multiple; starts and cores are returned in image coordinates.
    """
    length = n + 2 * before
    padded = round_up(length, multiple)
    if padded <= want:
        return AxisTiles(n, padded, (-before,), ((0, n),))
    if want <= 2 * halo:
        raise UserInputError(f"tile size {want} must be larger than twice the halo ({2 * halo}); use a larger --tile")
    # k tiles cover (t - h) + (k - 2)(t - 2h) + (t - h) = k (t - 2h) + 2h pixels of cores.
    k = -(-(padded - 2 * halo) // (want - 2 * halo))
    tile = round_up(-(-(padded - 2 * halo) // k) + 2 * halo, multiple)
    step = tile - 2 * halo
    # The last tile ends exactly at the padded end (as the whole image does), overlapping its
    # neighbour a little more than the others do.
    starts = [min(i * step, padded - tile) for i in range(k)]
    bounds = [min(max(b - before, 0), n) for b in (0, *(a + halo for a in starts[1:]), length)]
    return AxisTiles(n, tile, tuple(a - before for a in starts), tuple(itertools.pairwise(bounds)))


BORDERS = ("network", "mirror")
"""``network``: at the image's border the network sees what it sees on the whole image (its own
zero padding), as CAREamics and a whole-image run do; ``mirror``: the image is mirrored by the halo
first, bioimage.io's blockwise convention (bioimageio.core, deepImageJ, ilastik), at the cost of
``2 * halo`` more pixels per axis."""


def _default_tiles(shape: Sequence[int], default_tile: int, multiple: int, before: int) -> list[int]:
    """Default tile sizes: a budget of ``default_tile ** ndim`` pixels, not a cube.

    Axes that fit in ``default_tile`` run whole; the others share what they leave of the budget
    (the memory a default tile takes): a 64 x 512 x 512 stack runs 64 x 176 x 176 tiles instead of
    64 x 128 x 128 ones, 16 tiles instead of 49, with far less overlap.
    """
    padded = [round_up(n + 2 * before, multiple) for n in shape]
    fits = [p <= default_tile for p in padded]
    if all(fits) or not any(fits):
        return [default_tile] * len(shape)
    left = default_tile ** len(shape) / math.prod(p for p, f in zip(padded, fits, strict=True) if f)
    share = int(left ** (1 / fits.count(False)))
    share = max(default_tile, share // multiple * multiple)
    return [default_tile if f else share for f in fits]


def _grid(shape: tuple[int, ...], wants: Sequence[int], halo: int, multiple: int, before: int) -> TileGrid:
    axes = tuple(
        _axis_tiles(n, round_up(want, multiple), halo, multiple, before) for n, want in zip(shape, wants, strict=True)
    )
    return TileGrid(shape=shape, tile=tuple(a.tile for a in axes), halo=halo, axes=axes)


def _computed(grid: TileGrid) -> int:
    """Pixels the network computes for one sample (tiles times tile size, overlaps included)."""
    return len(grid) * math.prod(grid.tile)


def plan_grid(
    shape: Sequence[int],
    tile: Sequence[int] | None,
    halo: int,
    multiple: int,
    default_tile: int,
    border: str = "network",
    batch_size: int = 1,
) -> TileGrid:
    """Choose tiles no larger than the requested (or default, see :func:`_default_tiles`) size, evenly.

    An axis whose length, padded to the pooling ``multiple``, fits in one tile runs whole. Else
    it needs ``k = ceil((N - 2*halo) / (t_max - 2*halo))`` tiles, and their size is made as small
    as covers the axis (rounded up to the multiple), so no tile is mostly padding: 1024 px with a
    512 px maximum runs three 384 px tiles, not three 512 px ones. ``border``: one of
    :data:`BORDERS`.

    Without ``tile``, the memory bound is a batch of ``batch_size`` default tiles, and that
    budget may also go to fewer, larger tiles when they compute fewer pixels: every tile boundary
    costs ``2 * halo`` of recomputed context. A 1024 x 1024 image then runs whole (1.05 MPix)
    instead of as four 544 px tiles (1.18 MPix), a 64 x 512 x 512 stack as four 64 x 288 x 288
    tiles, one per batch (21 MVox), instead of sixteen 64 x 176 x 176 ones (32 MVox). Such a grid
    caps its batch (:meth:`TileGrid.tiles_per_batch`) so the batch stays within the budget.
    """
    shape = tuple(int(s) for s in shape)
    if tile is not None and len(tile) != len(shape):
        raise UserInputError(f"--tile {','.join(map(str, tile))} has {len(tile)} values for a {len(shape)}D image")
    if border not in BORDERS:
        raise UserInputError(f"border {border!r}: choose one of {', '.join(BORDERS)}")
    halo = round_up(halo, multiple)
    before = halo if border == "mirror" else 0
    if tile is not None:
        return _grid(shape, [int(t) for t in tile], halo, multiple, before)
    grid = _grid(shape, _default_tiles(shape, default_tile, multiple, before), halo, multiple, before)
    if batch_size > 1 and len(grid) > 1:
        budget = batch_size * default_tile ** len(shape)
        side = int(budget ** (1 / len(shape)) + 1e-9) // multiple * multiple
        large = _grid(shape, _default_tiles(shape, side, multiple, before), halo, multiple, before)
        # At least 5 % fewer pixels: below that, fewer tiles are not worth fewer tiles per batch.
        if _computed(large) < 0.95 * _computed(grid):
            cap = budget // math.prod(large.tile)
            return dataclasses.replace(large, batch_cap=max(1, cap))
    return grid


@dataclass(frozen=True)
class TTATransform:
    """One test-time augmentation of the YX plane: ``rotations`` quarter turns, then the flips.

    ``forward`` maps a batch ``(B, C, *spatial)`` to its augmented view, ``inverse`` maps the
    network's output back; the last two axes are Y and X (a 3D model's Z is never touched).
    """

    rotations: int = 0  # quarter turns in the YX plane (0-3)
    flips: tuple[int, ...] = ()  # axes flipped after rotating: -2 (Y), -1 (X)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.rot90(x, self.rotations, (-2, -1)) if self.rotations else x
        return torch.flip(x, self.flips) if self.flips else x

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flip(x, self.flips) if self.flips else x
        return torch.rot90(x, -self.rotations, (-2, -1)) if self.rotations else x

    def __iter__(self) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """``fwd, inv = transform``: unpacks like the (forward, inverse) pairs it replaces."""
        return iter((self.forward, self.inverse))


def tta_transforms(spatial_ndim: int, rotations: bool = True) -> list[TTATransform]:
    """The test-time augmentations of the YX plane.

    With ``rotations``: the 8 flips/90-degree rotations (the dihedral group). Without: the 4
    flips (none, X, Y, both), for models that must not be rotated: structN2V learns to ignore
    noise correlated along one axis, and a rotation turns row-correlated noise into
    column-correlated noise the network was never taught to ignore. A flip along either axis
    keeps rows rows and columns columns. The transforms act on the last two axes (Y, X) for
    ``spatial_ndim`` 2 and 3 alike.
    """
    if not rotations:
        return [TTATransform(0, flips) for flips in ((), (-1,), (-2,), (-2, -1))]
    return [TTATransform(k, flips) for k in range(4) for flips in ((), (-1,))]


TTA = bool | Sequence[TTATransform]
"""``tta`` arguments: ``False`` (none), ``True`` (all 8), or exactly these transforms."""


def _transforms(tta: TTA, spatial_ndim: int) -> Sequence[TTATransform]:
    if not isinstance(tta, Sequence):
        return tta_transforms(spatial_ndim) if tta else [TTATransform()]
    return list(tta) or [TTATransform()]


Job = tuple[int, tuple[int, ...]]  # (sample, tile origin in image coordinates)


def symmetric_index(start: int, stop: int, n: int) -> np.ndarray:
    """Source indices of positions ``start..stop-1`` of an axis of length ``n`` padded symmetrically.

    Position ``i`` (negative or ``>= n`` outside the image) holds the pixel that
    ``np.pad(..., mode="symmetric")`` puts there: the edge-repeating reflection ``-1 -> 0``,
    ``n -> n-1``, continued periodically with period ``2n`` when the padding is longer than
    the axis (as numpy does for tiny images).
    """
    r = np.mod(np.arange(start, stop), 2 * n)
    return np.where(r < n, r, 2 * n - 1 - r)


def tile_jobs(n_samples: int, grid: TileGrid) -> Iterator[Job]:
    """Every (sample, tile origin), sample by sample: the order in which tiles are batched."""
    return ((s, origin) for s in range(n_samples) for origin in grid.origins())


def core_window(origin: Sequence[int], grid: TileGrid) -> tuple[slice, ...]:
    """Where the core of the tile starting at ``origin`` lands in the image."""
    return tuple(slice(*a.cores[a.starts.index(o)]) for o, a in zip(origin, grid.axes, strict=True))


def run_tiles(
    forward: Callable[[torch.Tensor], torch.Tensor],
    jobs: Iterable[Job],
    read_tile: Callable[[Job], np.ndarray],
    write_core: Callable[[Job, tuple[slice, ...], np.ndarray], None],
    grid: TileGrid,
    batch_size: int,
    device: torch.device,
    tta: TTA = False,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Predict tiles batch by batch: the loop shared by in-memory and out-of-core prediction.

    ``read_tile(job)`` gives one network input ``(C, *grid.tile)`` (float32, normalised);
    ``write_core(job, window, y)`` receives the tile's core prediction ``(C_out, *window sizes)``
    for the image ``window`` from :func:`core_window`. Only ``batch_size`` tiles are in memory
    at a time. ``progress`` is called with the number of tiles finished after each batch.
    ``tta``: ``True`` averages the 8 flips/rotations, a sequence of :class:`TTATransform`
    exactly those (the :class:`~ai4life_kit.prediction.Predictor` passes the ones its model allows).
    """
    transforms = _transforms(tta, len(grid.shape))

    def run(batch: torch.Tensor) -> torch.Tensor:
        acc = None
        for fwd, inv in transforms:
            y = inv(forward(fwd(batch))).float()
            acc = y if acc is None else acc + y
        return acc / len(transforms)

    jobs = iter(jobs)
    batch_size = grid.tiles_per_batch(batch_size)
    while True:
        chunk = list(itertools.islice(jobs, batch_size))
        if not chunk:
            break
        tiles = np.stack([read_tile(job) for job in chunk])
        batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(device, non_blocking=True)
        del tiles
        pred = run(batch).cpu().numpy()
        for job, y in zip(chunk, pred, strict=True):
            dst = core_window(job[1], grid)
            crop = tuple(slice(d.start - o, d.stop - o) for d, o in zip(dst, job[1], strict=True))
            write_core(job, dst, y[(slice(None), *crop)])
        if progress is not None:
            progress(len(chunk))
