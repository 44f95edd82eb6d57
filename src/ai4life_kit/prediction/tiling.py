"""Tiled prediction with a halo: any image size, bounded memory, no seams.

One spatial axis of length ``n``, tile ``t`` and halo ``h`` (``t`` and ``h`` multiples of
``m = 2**depth``, so every tile sits on the same pooling grid as the whole image)::

    mirror-padded:   |hhh|.......... image (n) ..........|xxx|hhh|
    tile 0:          |hhh|== core (s = t-2h) ==|hhh|
    tile 1:                          |hhh|== core ==|hhh|
    ...
    output:              |== core ==|== core ==|...   cropped back to n

Each output pixel depends only on input pixels within the receptive-field radius (<= ``h``),
which are the same in the padded whole image and in its tile, so tiled and whole-image
predictions agree to float rounding. A dimension that fits in one tile is not split, and the
tiles of an axis share its length evenly (see :func:`plan_grid`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ai4life_kit.errors import UserInputError
from ai4life_kit.models import round_up

__all__ = [
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
class TileGrid:
    """Tile geometry along each spatial axis."""

    shape: tuple[int, ...]  # image size per axis
    tile: tuple[int, ...]  # network input size per axis
    halo: int
    counts: tuple[int, ...]  # tiles per axis

    @property
    def core(self) -> tuple[int, ...]:
        return tuple(t - 2 * self.halo for t in self.tile)

    @property
    def padded(self) -> tuple[int, ...]:
        return tuple(k * c + 2 * self.halo for k, c in zip(self.counts, self.core, strict=True))

    def origins(self) -> Iterator[tuple[int, ...]]:
        """Start of each tile in padded coordinates (= start of its core in image coordinates)."""
        ranges = [range(0, k * c, c) for k, c in zip(self.counts, self.core, strict=True)]
        return itertools.product(*ranges)

    def __len__(self) -> int:
        return math.prod(self.counts)


def plan_grid(
    shape: Sequence[int], tile: Sequence[int] | None, halo: int, multiple: int, default_tile: int
) -> TileGrid:
    """Choose tiles no larger than the requested (or default) size, with equal cores per axis.

    An axis of length ``n`` needs ``k = ceil(n / (t_max - 2*halo))`` tiles; their cores are then
    made as even as possible (``ceil(n / k)``, rounded up to the pooling multiple), so no tile is
    mostly padding: 1024 px with a 512 px maximum runs three 408 px tiles, not three 512 px ones.
    """
    shape = tuple(int(s) for s in shape)
    if tile is not None and len(tile) != len(shape):
        raise UserInputError(f"--tile {','.join(map(str, tile))} has {len(tile)} values for a {len(shape)}D image")
    halo = round_up(halo, multiple)
    sizes, counts = [], []
    for axis, n in enumerate(shape):
        want = round_up(default_tile if tile is None else int(tile[axis]), multiple)
        if want <= 2 * halo:
            raise UserInputError(
                f"tile size {want} must be larger than twice the halo ({2 * halo}); use a larger --tile"
            )
        k = -(-n // (want - 2 * halo))
        core = round_up(-(-n // k), multiple)
        sizes.append(core + 2 * halo)
        counts.append(k)
    return TileGrid(shape=shape, tile=tuple(sizes), halo=halo, counts=tuple(counts))


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


Job = tuple[int, tuple[int, ...]]  # (sample, tile origin in padded coordinates)


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
    """Where a tile's core lands in the image, clipped to the image (the last tiles overhang)."""
    return tuple(slice(o, min(o + c, n)) for o, c, n in zip(origin, grid.core, grid.shape, strict=True))


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

    core = (slice(None), slice(None)) + tuple(slice(grid.halo, grid.halo + c) for c in grid.core)
    jobs = iter(jobs)
    while True:
        chunk = list(itertools.islice(jobs, batch_size))
        if not chunk:
            break
        tiles = np.stack([read_tile(job) for job in chunk])
        batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(device, non_blocking=True)
        del tiles
        pred = run(batch).cpu().numpy()
        for job, y in zip(chunk, pred[core], strict=True):
            dst = core_window(job[1], grid)
            write_core(job, dst, y[(slice(None), *(slice(0, d.stop - d.start) for d in dst))])
        if progress is not None:
            progress(len(chunk))
