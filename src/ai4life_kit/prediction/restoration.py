"""Prediction for CARE's resampling tasks: super-resolution and isotropic reconstruction.

Both run a run directory's same-size 2D network on a finer grid (see
:mod:`ai4life_kit.prediction.resample`), so tiling, halos and seams are the
:class:`~ai4life_kit.prediction.predictor.Predictor`'s, unchanged:

- **super-resolution**: the image is interpolated bilinearly by ``factor`` in Y and X, then
  restored; the output is ``factor`` times larger in Y and X.
- **isotropic**: the volume is interpolated linearly along Z (input plane ``z`` at output plane
  ``z factor``); the 2D network restores every XZ slice and every YZ slice (the axial axis first,
  as in training), and the output is their mean: ``(Z - 1) factor + 1`` planes, nothing past the
  last acquired plane. The network runs on the grid of the bioimage.io package's
  :class:`~ai4life_kit.models.unet.IsotropicUNet` (``factor Z`` planes, the last one held), so a
  package's output is this output followed by ``factor - 1`` planes past the volume. CSBDeep's isotropic
  CARE takes their geometric mean instead, which needs non-negative values; the arithmetic mean
  is the unbiased one for noisy, offset-subtracted data (``combine="geometric"`` gives CSBDeep's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ai4life_kit.config.spec import TaskConfig
from ai4life_kit.data.axes import Layout
from ai4life_kit.data.pixel_size import PixelSize
from ai4life_kit.errors import DataError, UserInputError
from ai4life_kit.prediction.predictor import Predictor
from ai4life_kit.prediction.resample import upsample_axis, upsample_lateral, upsampled_length

__all__ = ["RestorationPredictor", "COMBINE"]

COMBINE = ("mean", "geometric")


class RestorationPredictor:
    """A run directory's network for a resampling task, with :class:`Predictor`'s call signature.

    Parameters
    ----------
    predictor
        The run's 2D :class:`Predictor` (its network works on the fine grid).
    task
        The run's task (``super_resolution`` or ``isotropic``).
    combine
        Isotropic: ``mean`` (default) or ``geometric`` of the XZ and YZ results.
    """

    def __init__(self, predictor: Predictor, task: TaskConfig, combine: str = "mean") -> None:
        if not task.resamples:
            raise ValueError(f"task {task.kind!r} does not resample; use the Predictor itself")
        if combine not in COMBINE:
            raise UserInputError(f"combine {combine!r}: choose one of {', '.join(COMBINE)}")
        self.inner = predictor
        self.task = task
        self.factor = task.factor
        self.combine = combine
        self.probabilistic = False  # the uncertainty maps of resampled outputs are not offered
        if task.kind == "isotropic":
            predictor.tta_rotations = False  # a rotation would turn the axial axis into a lateral one

    # The CLI sets these on whatever load_model gives.
    @property
    def border(self) -> str:
        return self.inner.border

    @border.setter
    def border(self, value: str) -> None:
        self.inner.border = value

    @property
    def engine(self) -> str:
        return self.inner.engine

    @engine.setter
    def engine(self, value: str) -> None:
        self.inner.engine = value

    @property
    def spatial_ndim(self) -> int:
        """Spatial axes of the *input*: a volume (3) for isotropic reconstruction, images (2) for super-resolution."""
        return 3 if self.task.kind == "isotropic" else 2

    @property
    def n_channels(self) -> int:
        return self.inner.n_channels

    def require_probabilistic(self) -> None:
        raise UserInputError(f"--uncertainty is not offered for {self.task.kind.replace('_', '-')} models")

    def check_input(self, shape: tuple[int, ...], axes: str) -> Layout:
        if self.task.kind == "isotropic" and "Z" not in axes.upper():
            raise DataError(
                f"isotropic reconstruction restores volumes, but the image axes are {axes!r} (no Z); "
                "give a (Z, Y, X) stack, or its axes with --axes"
            )
        layout = Layout.of(tuple(shape), axes, self.spatial_ndim)
        if layout.n_channels != self.n_channels:
            raise DataError(f"the model expects {self.n_channels} channel(s), the image has {layout.n_channels}")
        if self.task.kind == "isotropic" and shape[axes.index("Z")] < 2:
            raise DataError(f"isotropic reconstruction needs a volume with at least 2 Z planes, got shape {shape}")
        return layout

    def output_shape(self, shape: tuple[int, ...], axes: str) -> tuple[int, ...]:
        """The output's shape for an input of ``shape`` (same axes)."""
        f = self.factor
        if self.task.kind == "super_resolution":
            return tuple(n * f if a in "YX" else n for a, n in zip(axes, shape, strict=True))
        return tuple(upsampled_length(n, f) if a == "Z" else n for a, n in zip(axes, shape, strict=True))

    def output_pixel_size(self, size: PixelSize) -> PixelSize:
        """The output's pixel size: lateral sizes over ``factor`` (super-resolution); Z over ``factor`` (isotropic).

        Isotropic without a recorded Z step: the lateral pixel size, which is what ``factor``
        promised (1 lateral pixel, ``unit="pixel"``, when nothing is recorded at all).
        """
        if self.task.kind == "super_resolution":
            return size.scaled(x=self.factor, y=self.factor)
        if size.z is not None:
            return size.scaled(z=self.factor)
        if size.known:
            return PixelSize(size.x, size.y, size.x, size.unit)
        return PixelSize(1.0, 1.0, 1.0, "pixel")

    def _slices(self, shape: tuple[int, ...], axes: str) -> list[tuple[int, tuple[int, int]]]:
        """Isotropic: ``(count, (Z', side))`` of the XZ and the YZ slices of an input."""
        layout = self.check_input(shape, axes)
        n_samples = int(np.prod([shape[axes.index(a)] for a in layout._batch_letters], dtype=np.int64))
        z, y, x = (shape[axes.index(a)] for a in "ZYX")
        zz = z * self.factor  # the grid the network runs on (see _isotropic)
        return [(n_samples * y, (zz, x)), (n_samples * x, (zz, y))]

    def _check_tile(self, tile: Sequence[int] | None) -> None:
        if tile is not None and len(tile) != 2:
            on = "the XZ and YZ slices (Z', X) / (Z', Y)" if self.task.kind == "isotropic" else "the output's Y and X"
            raise UserInputError(f"--tile: this model tiles {on}, so give 2 sizes, not {len(tile)}")

    def n_tiles(self, shape: tuple[int, ...], axes: str, tile: Sequence[int] | None = None, batch_size: int = 4) -> int:
        """Tiles :meth:`predict` runs (for progress bars)."""
        self._check_tile(tile)
        if self.task.kind == "super_resolution":
            return self.inner.n_tiles(self.output_shape(shape, axes), axes, tile, batch_size)
        return sum(n * len(self.inner.plan(side, tile, batch_size)) for n, side in self._slices(shape, axes))

    def predict(
        self,
        array: np.ndarray,
        axes: str,
        tile: Sequence[int] | None = None,
        tta: bool = False,
        batch_size: int = 4,
        precision: str = "auto",
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Restore an image (super-resolution) or a volume (isotropic); float32, :meth:`output_shape`."""
        self._check_tile(tile)
        layout = self.check_input(array.shape, axes)
        options: dict[str, Any] = {
            "tile": tile,
            "tta": tta,
            "batch_size": batch_size,
            "precision": precision,
            "progress": progress,
        }
        canon = layout.to_canonical(np.asarray(array, dtype=np.float32))
        if self.task.kind == "super_resolution":
            out = self.inner.predict_canonical(upsample_lateral(canon, self.factor), **options)
        else:
            out = self._isotropic(canon, options)
        return Layout(layout.axes, self.output_shape(array.shape, axes), self.spatial_ndim).from_canonical(out)

    def _isotropic(self, volume: np.ndarray, options: dict[str, Any]) -> np.ndarray:
        """``(S, C, Z, Y, X)`` -> ``(S, C, Z', Y, X)``: the XZ and YZ restorations of the Z-upsampled volume."""
        # (S, C, factor Z, Y, X): the package's grid; the planes past the volume are dropped at the end
        fine = upsample_axis(volume, self.factor, axis=2, hold_last=True)
        s, c, zz, ny, nx = fine.shape
        keep = upsampled_length(volume.shape[2], self.factor)
        # XZ slices: one per (S, Y), each (Z', X); YZ slices: one per (S, X), each (Z', Y)
        xz = np.ascontiguousarray(fine.transpose(0, 3, 1, 2, 4)).reshape(s * ny, c, zz, nx)
        xz = self.inner.predict_canonical(xz, **options).reshape(s, ny, c, zz, nx).transpose(0, 2, 3, 1, 4)
        yz = np.ascontiguousarray(fine.transpose(0, 4, 1, 2, 3)).reshape(s * nx, c, zz, ny)
        del fine
        yz = self.inner.predict_canonical(yz, **options).reshape(s, nx, c, zz, ny).transpose(0, 2, 3, 4, 1)
        xz, yz = xz[:, :, :keep], yz[:, :, :keep]
        if self.combine == "geometric":
            return np.sqrt(np.maximum(xz, 0) * np.maximum(yz, 0), dtype=np.float32)
        return np.add(xz, yz, dtype=np.float32) * np.float32(0.5)
