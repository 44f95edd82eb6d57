"""Lazy image sources: read windows of images that need not fit in memory.

Three kinds, chosen by :func:`open_source` from the file itself:

* ``MemmapTiffSource``: uncompressed, contiguous TIFFs (what tifffile, ImageJ and most
  acquisition software write). Every read maps the file, copies the window and unmaps it
  again, so touched pages never accumulate in the process's resident memory; the kernel's page
  cache does the caching.
* ``ChunkedSource``: Zarr / OME-Zarr arrays (``zarr`` package) and compressed or tiled TIFFs (read
  through tifffile's Zarr store). Windows are assembled from decoded chunks kept in a shared
  :class:`ChunkCache` with a byte budget.
* ``ArraySource``: an array already in memory (tests, small files, the Python API).

Every source reports its shape, dtype and axes (kit letters, in the file's order) and
:meth:`ImageSource.read` returns the window in those native axes and dtype. The writable
counterparts (prediction outputs) are in :mod:`ai4life_kit.data.targets`.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ai4life_kit.data.axes import resolve_axes, validate_axes
from ai4life_kit.data.formats import is_zarr_path, require_zarr
from ai4life_kit.data.tiff_io import metadata_axes, quiet_tifffile
from ai4life_kit.errors import DataError

__all__ = [
    "ArraySource",
    "ChunkCache",
    "ChunkedSource",
    "ImageSource",
    "MemmapTiffSource",
    "open_source",
    "DEFAULT_CACHE",
]

# OME-NGFF axis names -> kit letters
_FROM_NGFF = {"s": "S", "t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}


class ChunkCache:
    """Least-recently-used decoded chunks, bounded in bytes, shared by all chunked sources."""

    def __init__(self, max_bytes: int = 512 * 2**20) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, load) -> np.ndarray:
        """The chunk for ``key``, calling ``load()`` on a miss."""
        with self._lock:
            chunk = self._items.get(key)
            if chunk is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return chunk
        chunk = load()
        with self._lock:
            self.misses += 1
            if chunk.nbytes <= self.max_bytes and key not in self._items:
                self._items[key] = chunk
                self.nbytes += chunk.nbytes
                while self.nbytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self.nbytes -= old.nbytes
        return chunk


DEFAULT_CACHE = ChunkCache()


class ImageSource:
    """An image whose windows can be read without loading all of it.

    Attributes
    ----------
    path
        Where it comes from (for messages).
    axes
        Kit axes letters in the order of :attr:`shape`.
    shape, dtype
        Of the whole image, in its native order and type.
    """

    path: Path
    axes: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self, key: tuple[slice, ...]) -> np.ndarray:
        """The window ``key`` (one slice per axis, step 1) in native axes and dtype."""
        raise NotImplementedError

    def read_all(self) -> np.ndarray:
        return self.read(tuple(slice(0, n) for n in self.shape))

    def close(self) -> None:
        """Release file handles."""


class ArraySource(ImageSource):
    """An in-memory array (no copy) seen as a source."""

    def __init__(self, array: np.ndarray, axes: str, path: str | Path = "<array>") -> None:
        self.array = array
        self.axes = validate_axes(axes, array.ndim)
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self.path = Path(path)

    def read(self, key: tuple[slice, ...]) -> np.ndarray:
        return np.array(self.array[key])

    def write(self, key: tuple[slice, ...], data: np.ndarray) -> None:
        """Store ``data`` (native axes) at the window ``key`` of the array."""
        self.array[key] = data


class MemmapTiffSource(ImageSource):
    """An uncompressed contiguous TIFF series, read through a short-lived memory map per window."""

    def __init__(self, path: Path, axes: str, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> None:
        self.path, self.axes, self.shape, self.offset = path, axes, tuple(shape), int(offset)
        self._file_dtype = dtype  # may be big-endian
        self.dtype = dtype.newbyteorder("=")

    def read(self, key: tuple[slice, ...]) -> np.ndarray:
        mm = np.memmap(self.path, dtype=self._file_dtype, mode="r", offset=self.offset, shape=self.shape)
        window = np.array(mm[key], dtype=self.dtype)
        del mm  # the last reference: the file is unmapped now and its pages leave this process's RSS
        return window


class ChunkedSource(ImageSource):
    """A chunked array (``zarr.Array`` or tifffile's Zarr view of a TIFF) read through a chunk cache."""

    def __init__(self, array: Any, axes: str, path: Path, cache: ChunkCache | None = None, handle: Any = None) -> None:
        self.array, self.axes, self.path = array, axes, path
        self.shape = tuple(int(n) for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunks = tuple(int(c) for c in array.chunks)
        self.cache = DEFAULT_CACHE if cache is None else cache
        # A key that is never reused: id(self) could be, once this source is freed, and a new
        # source would then be served this one's cached chunks.
        self._cache_token = object()
        self._handle = handle  # keeps a TiffFile open while its Zarr store is in use

    def _chunk(self, index: tuple[int, ...]) -> np.ndarray:
        key = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(index, self.chunks, self.shape, strict=True))
        return self.cache.get((self._cache_token, index), lambda: self._load(key))

    def _load(self, key: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except Exception as exc:  # codecs and stores raise their own types for damaged chunks
            window = ",".join(f"{s.start}:{s.stop}" for s in key)
            raise DataError(
                f"{self.path} cannot be read at [{window}] (truncated or corrupt: {type(exc).__name__}: {exc})"
            ) from None

    def read(self, key: tuple[slice, ...]) -> np.ndarray:
        lo = [s.start for s in key]
        hi = [s.stop for s in key]
        out = np.empty([b - a for a, b in zip(lo, hi, strict=True)], dtype=self.dtype)
        ranges = [range(a // c, (b - 1) // c + 1) for a, b, c in zip(lo, hi, self.chunks, strict=True)]
        for index in itertools.product(*ranges):
            chunk = self._chunk(index)
            starts = [i * c for i, c in zip(index, self.chunks, strict=True)]
            a = [max(a, s) for a, s in zip(lo, starts, strict=True)]
            b = [min(b, s + n) for b, s, n in zip(hi, starts, chunk.shape, strict=True)]
            out[tuple(slice(x - o, y - o) for x, y, o in zip(a, b, lo, strict=True))] = chunk[
                tuple(slice(x - s, y - s) for x, y, s in zip(a, b, starts, strict=True))
            ]
        return out

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __del__(self) -> None:
        # A source dropped without close(), e.g. by a loader that stopped at a corrupt chunk,
        # still closes its TIFF rather than leaving the file handle to the garbage collector.
        with contextlib.suppress(Exception):
            self.close()


def _axes_from_names(names: list) -> str | None:
    """Kit letters for OME-NGFF / xarray axis names (``t c z y x`` and ``s``), or None if any is unknown."""
    letters = [_FROM_NGFF.get(str(n).lower(), "?") for n in names]
    return None if not letters or "?" in letters else "".join(letters)


def _open_tiff(path: Path, axes: str | None, spatial_ndim: int, cache: ChunkCache | None) -> ImageSource:
    try:
        with quiet_tifffile():
            tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise DataError(f"{path} is not a readable TIFF ({type(exc).__name__}: {exc})") from None
    keep_open = False
    try:
        if not tif.series or not tif.pages:
            raise DataError(f"{path} is not a readable TIFF (it contains no image)")
        series = tif.series[0]
        dtype = np.dtype(series.dtype)
        if dtype.kind not in "uif":
            raise DataError(f"{path} has unsupported dtype {dtype} (need integer or float pixels)")
        shape = tuple(int(n) for n in series.shape)
        resolved = resolve_axes(axes, metadata_axes(tif), shape, spatial_ndim)
        if series.dataoffset is not None:
            file_dtype = dtype.newbyteorder(tif.byteorder)
            # A truncated file (an interrupted copy or download) would fail later inside
            # np.memmap with "mmap length is greater than file size".
            needed = series.dataoffset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            size = path.stat().st_size
            if needed > size:
                raise DataError(f"{path} is truncated: its image needs {needed} bytes, the file has {size}")
            return MemmapTiffSource(path, resolved, shape, file_dtype, series.dataoffset)
        try:
            import zarr
        except ImportError:
            # Without zarr a compressed TIFF can still be used, read whole.
            try:
                return ArraySource(series.asarray(), resolved, path)
            except Exception as exc:
                raise DataError(f"{path} is not a readable TIFF ({type(exc).__name__}: {exc})") from None
        array = zarr.open(series.aszarr(level=0), mode="r")
        keep_open = True
        return ChunkedSource(array, resolved, path, cache, handle=tif)
    finally:
        if not keep_open:
            tif.close()


def _open_zarr(path: Path, axes: str | None, spatial_ndim: int, cache: ChunkCache | None) -> ImageSource:
    zarr = require_zarr(path, "reading")
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise DataError(f"{path} is not a readable Zarr ({type(exc).__name__}: {exc})") from None
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        if not multiscales:
            raise DataError(f"{path} is a Zarr group without OME-Zarr 'multiscales': give the array's folder")
        first = multiscales[0]
        file_axes = _axes_from_names([a["name"] if isinstance(a, dict) else a for a in first.get("axes", [])])
        node = node[first["datasets"][0]["path"]]
    else:
        file_axes = _axes_from_names(node.attrs.get("_ARRAY_DIMENSIONS") or [])  # xarray's convention
    if np.dtype(node.dtype).kind not in "uif":
        raise DataError(f"{path} has unsupported dtype {node.dtype} (need integer or float pixels)")
    shape = tuple(int(n) for n in node.shape)
    return ChunkedSource(node, resolve_axes(axes, file_axes, shape, spatial_ndim), path, cache)


def open_source(
    path: str | Path, axes: str | None = None, spatial_ndim: int = 2, cache: ChunkCache | None = None
) -> ImageSource:
    """Open a TIFF or Zarr image lazily; axes from ``axes``, else the file's metadata, else a guess.

    Raises
    ------
    DataError
        Missing, unreadable or unsupported files, and axes that do not fit the image.
    """
    path = Path(path)
    if is_zarr_path(path):
        return _open_zarr(path, axes, spatial_ndim, cache)
    if not path.is_file():
        raise DataError(f"input {path} does not exist")
    return _open_tiff(path, axes, spatial_ndim, cache)
