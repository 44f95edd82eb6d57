"""Axes strings and the one canonical layout used inside the kit.

User-facing axes use the CSBDeep / bioimage.io letters ``S`` (sample), ``T`` (time),
``C`` (channel), ``Z``, ``Y``, ``X``. Inside the kit every image is an array in the
canonical order ``SCYX`` (2D models) or ``SCZYX`` (3D models): ``S`` and ``T`` (and ``Z``
for a 2D model) are folded into one sample axis, and a missing channel axis becomes size 1.
:class:`Layout` converts both ways so outputs keep the input's exact shape and axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ai4life_kit.errors import DataError

__all__ = ["VALID_AXES", "validate_axes", "guess_axes", "resolve_axes", "Layout"]

VALID_AXES = "STCZYX"


def validate_axes(axes: str, ndim: int | None = None) -> str:
    """Return ``axes`` upper-cased after checking letters, duplicates, Y/X and length."""
    axes = axes.strip().upper()
    bad = sorted(set(axes) - set(VALID_AXES))
    if bad:
        raise DataError(f"axes {axes!r} contain {''.join(bad)!r}; use letters from {VALID_AXES!r}")
    if len(set(axes)) != len(axes):
        raise DataError(f"axes {axes!r} repeat a letter")
    if "Y" not in axes or "X" not in axes:
        raise DataError(f"axes {axes!r} must contain Y and X")
    if ndim is not None and len(axes) != ndim:
        raise DataError(f"axes {axes!r} have {len(axes)} letters but the image has {ndim} dimensions")
    return axes


def guess_axes(shape: tuple[int, ...], spatial_ndim: int) -> str:
    """Axes for an image without metadata: ``YX`` last, ``Z`` before them for 3D, ``S`` before."""
    ndim = len(shape)
    known = "ZYX" if spatial_ndim == 3 else "YX"
    if ndim < len(known):
        raise DataError(f"image of shape {shape} has too few dimensions for a {spatial_ndim}D model")
    if ndim > len(known) + 1:
        raise DataError(f"cannot guess the axes of an image of shape {shape}; pass --axes (e.g. SCYX)")
    return "S" * (ndim - len(known)) + known


def resolve_axes(given: str | None, from_file: str | None, shape: tuple[int, ...], spatial_ndim: int) -> str:
    """The axes of an image: the user's ``given`` axes, else the file's metadata, else a guess."""
    if given is not None:
        return validate_axes(given, len(shape))
    if from_file is not None:
        return validate_axes(from_file, len(shape))
    return guess_axes(shape, spatial_ndim)


@dataclass(frozen=True)
class Layout:
    """How an array with ``axes`` maps to the canonical ``SC(Z)YX`` layout and back."""

    axes: str
    shape: tuple[int, ...]
    spatial_ndim: int

    @classmethod
    def of(cls, shape: tuple[int, ...], axes: str, spatial_ndim: int) -> Layout:
        axes = validate_axes(axes, len(shape))
        if spatial_ndim == 3 and "Z" not in axes:
            # A video (T, Y, X) goes through a space-time model with its T read as Z (cidc25-n2v2-st.yaml).
            hint = f"; to denoise over time, read T as Z: --axes {axes.replace('T', 'Z')}" if "T" in axes else ""
            raise DataError(f"a 3D model needs a Z axis, but the image axes are {axes!r}{hint}")
        return cls(axes, tuple(shape), spatial_ndim)

    @property
    def _batch_letters(self) -> str:
        batch = "ST" if self.spatial_ndim == 3 else "STZ"
        return "".join(a for a in self.axes if a in batch)

    @property
    def _space_letters(self) -> str:
        return "ZYX" if self.spatial_ndim == 3 else "YX"

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Return a view/copy of ``array`` in ``SC(Z)YX`` order."""
        if array.shape != self.shape:
            raise DataError(f"array shape {array.shape} does not match layout shape {self.shape}")
        order = self._batch_letters + ("C" if "C" in self.axes else "") + self._space_letters
        arr = np.transpose(array, [self.axes.index(a) for a in order])
        n_batch = len(self._batch_letters)
        n_sp = self.spatial_ndim
        batch = int(np.prod(arr.shape[:n_batch], dtype=np.int64)) if n_batch else 1
        channels = self.shape[self.axes.index("C")] if "C" in self.axes else 1
        return arr.reshape((batch, channels) + arr.shape[-n_sp:])

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_canonical` (the channel count must be unchanged)."""
        order = self._batch_letters + ("C" if "C" in self.axes else "") + self._space_letters
        shape_in_order = tuple(self.shape[self.axes.index(a)] for a in order)
        arr = array.reshape(shape_in_order)
        return np.transpose(arr, [order.index(a) for a in self.axes])

    @property
    def n_channels(self) -> int:
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1
