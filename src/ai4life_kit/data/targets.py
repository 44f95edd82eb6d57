"""Writable images: prediction outputs written window by window (TIFF memory maps, Zarr arrays).

Both are created at a path chosen by the caller (a temporary name, see
:func:`ai4life_kit.prediction.streaming.create_output`) and then written window by window; as
sources (they subclass them) they read back what was written.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import tifffile

from ai4life_kit.data.axes import validate_axes
from ai4life_kit.data.formats import TO_TIFFFILE, require_zarr
from ai4life_kit.data.sources import ChunkCache, ChunkedSource, MemmapTiffSource

__all__ = ["MemmapTiffTarget", "ZarrTarget"]


def _leading_block(shape: tuple[int, ...], key: tuple[slice, ...]) -> tuple[int, tuple[int, ...], tuple[slice, ...]]:
    """The smallest C-order block of whole trailing rows that holds the window ``key``.

    Leading axes where the window has length 1 are fixed, the first longer axis gives the
    block's extent and all later axes are whole. Returns the block's first element (flat
    index), its shape, and the window's key inside it.
    """
    strides = [int(np.prod(shape[k + 1 :], dtype=np.int64)) for k in range(len(shape))]
    start = 0
    for k, s in enumerate(key):
        start += s.start * strides[k]
        if s.stop - s.start > 1 or k == len(shape) - 1:
            return start, (s.stop - s.start, *shape[k + 1 :]), (slice(None), *key[k + 1 :])
    raise ValueError("empty key")  # unreachable: the last axis always returns


class MemmapTiffTarget(MemmapTiffSource):
    """A new uncompressed TIFF written window by window through short-lived memory maps.

    The file is created by :func:`tifffile.memmap` with the axes metadata, photometric and resolution unit of
    :func:`~ai4life_kit.data.tiff_io.write_image`, and the same classic/BigTIFF choice (BigTIFF
    only above 4 GiB - 32 MiB), and its disk space is reserved at once (:func:`_reserve`). Each
    :meth:`write` maps only the rows its window spans, copies the window, flushes and unmaps, so
    written pages never accumulate in the process's RSS.
    """

    @classmethod
    def create(
        cls, path: str | Path, shape: tuple[int, ...], axes: str, dtype: np.dtype | type = np.float32
    ) -> MemmapTiffTarget:
        """Create (or replace) ``path`` as an empty TIFF of ``shape`` with kit ``axes``."""

        path = Path(path)
        axes = validate_axes(axes, len(shape))
        mm = tifffile.memmap(
            path,
            shape=tuple(int(n) for n in shape),
            dtype=np.dtype(dtype),
            metadata={"axes": "".join(TO_TIFFFILE[a] for a in axes)},
            resolution=(1.0, 1.0),
            resolutionunit="CENTIMETER",
            photometric="minisblack",
        )
        offset, file_dtype = int(mm.offset), mm.dtype
        del mm  # unmapped; writes map the file again, a few rows at a time
        _reserve(path, offset + int(np.prod(shape, dtype=np.int64)) * file_dtype.itemsize)
        return cls(path, axes, tuple(int(n) for n in shape), file_dtype, offset)

    def write(self, key: tuple[slice, ...], data: np.ndarray) -> None:
        """Store ``data`` (native axes) at the window ``key``."""
        first, block_shape, block_key = _leading_block(self.shape, key)
        offset = self.offset + first * self._file_dtype.itemsize
        mm = np.memmap(self.path, dtype=self._file_dtype, mode="r+", offset=offset, shape=block_shape)
        mm[block_key] = data
        # Write back now (prediction writes from a background thread, so this overlaps the model)
        # rather than leaving gigabytes of dirty page cache to be flushed after the last tile.
        mm.flush()
        del mm  # the last reference: unmapped, so the written pages leave this process's RSS


def _reserve(path: Path, size: int) -> None:
    """Allocate the disk blocks of the first ``size`` bytes of ``path`` now.

    tifffile's memmap file is sparse: on a full disk, a store into a mapped page that has no
    block behind it kills the process with SIGBUS (no message, no cleanup). Reserved up front,
    a full disk is an ``ENOSPC`` here instead, before any tile is predicted. File systems
    without ``fallocate`` keep the sparse file.
    """
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        os.close(fd)


class ZarrTarget(ChunkedSource):
    """A new Zarr v3 array written window by window (chunk-aligned windows need no read-back).

    Axes are stored both as Zarr v3 ``dimension_names`` and as xarray's ``_ARRAY_DIMENSIONS``
    attribute (lower-case kit letters), which :func:`open_source` reads back.
    """

    @classmethod
    def create(
        cls,
        path: str | Path,
        shape: tuple[int, ...],
        axes: str,
        chunks: tuple[int, ...] | None = None,
        dtype: np.dtype | type = np.float32,
    ) -> ZarrTarget:
        """Create a Zarr array at ``path`` (a new or empty folder)."""
        path = Path(path)
        zarr = require_zarr(path)
        axes = validate_axes(axes, len(shape))
        shape = tuple(int(n) for n in shape)
        if chunks is None:
            chunks = tuple(n if a in "YX" else 1 for a, n in zip(axes, shape, strict=True))
        chunks = tuple(max(1, min(int(c), n)) for c, n in zip(chunks, shape, strict=True))
        names = [a.lower() for a in axes]
        array = zarr.create_array(
            store=str(path),
            shape=shape,
            chunks=chunks,
            dtype=np.dtype(dtype),
            fill_value=0,
            dimension_names=names,
            attributes={"_ARRAY_DIMENSIONS": names},
        )
        # No decoded chunks are cached for a target: reads (tests, checks) must see what was written.
        return cls(array, axes, path, cache=ChunkCache(0))

    def write(self, key: tuple[slice, ...], data: np.ndarray) -> None:
        """Store ``data`` (native axes) at the window ``key``."""
        self.array[key] = data
