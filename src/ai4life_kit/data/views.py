"""A lazy image seen in the kit's canonical ``(S, C, *spatial)`` order, without reading it.

:class:`CanonicalView` is to an :class:`~ai4life_kit.data.sources.ImageSource` what
:meth:`Layout.to_canonical <ai4life_kit.data.axes.Layout.to_canonical>` is to an array: the batch
letters (``S``, ``T``, and ``Z`` for 2D models) fold into one sample index, a missing ``C`` becomes
size 1. A view can be narrowed to a sub-box (validation strips, held-out samples) and reads one
sample's window at a time, so only what is read is ever in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ai4life_kit.data.axes import Layout
from ai4life_kit.data.sources import ImageSource
from ai4life_kit.errors import DataError

__all__ = ["CanonicalView"]


class CanonicalView:
    """``source`` as a canonical ``(S, C, *spatial)`` array, optionally restricted to a box.

    Parameters
    ----------
    source
        The lazy image.
    spatial_ndim
        2 or 3 (the model's dimensionality).
    box
        ``(start, stop)`` per canonical axis except ``C``, i.e. for ``S`` and each spatial axis
        (default: everything).
    """

    def __init__(self, source: ImageSource, spatial_ndim: int, box: Sequence[tuple[int, int]] | None = None) -> None:
        self.source = source
        self.layout = Layout.of(source.shape, source.axes, spatial_ndim)
        self.spatial_ndim = spatial_ndim
        axes = source.axes
        self._batch_letters = self.layout._batch_letters
        self._space_letters = self.layout._space_letters
        self._batch_shape = tuple(source.shape[axes.index(a)] for a in self._batch_letters)
        n_samples = int(np.prod(self._batch_shape, dtype=np.int64)) if self._batch_shape else 1
        full = [(0, n_samples)] + [(0, source.shape[axes.index(a)]) for a in self._space_letters]
        self.box = tuple(full if box is None else (tuple(b) for b in box))
        if len(self.box) != 1 + spatial_ndim:
            raise ValueError(f"box needs {1 + spatial_ndim} ranges, got {len(self.box)}")
        self.n_channels = self.layout.n_channels
        # Order of the native window's axes after reading, and where C goes: batch letters first
        # (each of size 1), then C (if any), then space, exactly as Layout.to_canonical orders them.
        self._order = self._batch_letters + ("C" if "C" in axes else "") + self._space_letters
        self._perm = [axes.index(a) for a in self._order]

    # -- array-like surface -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        s, *space = self.box
        return (s[1] - s[0], self.n_channels, *(b - a for a, b in space))

    @property
    def ndim(self) -> int:
        return 2 + self.spatial_ndim

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def dtype(self) -> np.dtype:
        return self.source.dtype

    @property
    def name(self) -> str:
        return self.source.path.name

    def narrow(self, axis: int, start: int, stop: int) -> CanonicalView:
        """The sub-view ``[start:stop]`` along canonical ``axis`` (0 = S, 2.. = spatial; not C)."""
        if axis == 1:
            raise ValueError("views cannot be narrowed along C")
        k = 0 if axis == 0 else axis - 1
        a, b = self.box[k]
        if not 0 <= start < stop <= b - a:
            raise ValueError(f"narrow [{start}:{stop}] is outside axis {axis} of size {b - a}")
        box = list(self.box)
        box[k] = (a + start, a + stop)
        return CanonicalView(self.source, self.spatial_ndim, box)

    # -- reading and writing --------------------------------------------------------------
    def native_key(self, sample: int, window: Sequence[slice] | None = None) -> tuple[slice, ...]:
        """The source's key (one slice per native axis) for ``(C, *window)`` of one sample.

        ``window`` is relative to the view (default: all of it); batch letters get the sample's
        unravelled index (a slice of length 1), ``C`` all channels.
        """
        s0 = self.box[0][0]
        if not 0 <= sample < self.box[0][1] - s0:
            raise IndexError(f"sample {sample} outside a view of {self.shape[0]} samples")
        index = np.unravel_index(s0 + sample, self._batch_shape) if self._batch_shape else ()
        position = dict(zip(self._batch_letters, (int(i) for i in index), strict=True))
        if window is None:
            window = [slice(0, b - a) for a, b in self.box[1:]]
        spatial = {
            letter: slice(a + w.start, a + w.stop)
            for letter, (a, _), w in zip(self._space_letters, self.box[1:], window, strict=True)
        }
        key = []
        for letter in self.source.axes:
            if letter in position:
                key.append(slice(position[letter], position[letter] + 1))
            elif letter == "C":
                key.append(slice(0, self.n_channels))
            else:
                key.append(spatial[letter])
        return tuple(key)

    def read(self, sample: int, window: Sequence[slice] | None = None) -> np.ndarray:
        """``(C, *window)`` of one sample, in the source's dtype; ``window`` is relative to the view."""
        raw = self.source.read(self.native_key(sample, window))
        arr = np.transpose(raw, self._perm)
        return arr.reshape((self.n_channels,) + arr.shape[-self.spatial_ndim :])

    def write(self, sample: int, window: Sequence[slice] | None, data: np.ndarray) -> None:
        """Store ``data`` of shape ``(C, *window)`` at one sample's window (the inverse of :meth:`read`).

        The source must have a ``write`` method (:class:`~ai4life_kit.data.targets.MemmapTiffTarget`,
        :class:`~ai4life_kit.data.targets.ZarrTarget` or :class:`~ai4life_kit.data.sources.ArraySource`).
        """
        key = self.native_key(sample, window)
        write = getattr(self.source, "write", None)
        if write is None:
            raise TypeError(f"{type(self.source).__name__} {self.source.path} is not writable")
        # (C, *window) -> the native window: unfold C and the size-1 batch axes in read order,
        # then undo read's transposition.
        in_order = tuple(key[i].stop - key[i].start for i in self._perm)
        native = np.transpose(np.reshape(data, in_order), np.argsort(self._perm))
        write(key, native)

    def to_array(self, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """The whole view in memory as ``dtype`` (for data small enough to hold)."""
        out = np.empty(self.shape, dtype=dtype)
        for s in range(self.shape[0]):
            out[s] = self.read(s)
        if out.dtype.kind == "f" and not np.isfinite(out).all():
            raise DataError(f"{self.source.path} contains NaN or Inf pixels")
        return out
