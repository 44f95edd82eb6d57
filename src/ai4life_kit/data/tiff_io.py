"""TIFF input and output with axes, via tifffile.

Axes come from OME / ImageJ / tifffile metadata when present, from ``--axes`` when given
(which wins), and are guessed only when unambiguous. tifffile's own letters differ from the
CSBDeep convention (tifffile's ``S`` means RGB samples), so they are translated here.
"""

from __future__ import annotations

import contextlib
import glob
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from ai4life_kit.data.axes import resolve_axes, validate_axes
from ai4life_kit.data.formats import FROM_TIFFFILE, TIFF_SUFFIXES, TO_TIFFFILE, is_zarr_path
from ai4life_kit.data.pixel_size import PixelSize
from ai4life_kit.errors import DataError
from ai4life_kit.fileio import atomic_path

__all__ = ["TIFF_SUFFIXES", "ImageFile", "resolve_inputs", "read_image", "write_image"]


@dataclass(frozen=True)
class ImageFile:
    """A loaded image: float32 data, its axes in kit letters, and where it came from."""

    path: Path
    data: np.ndarray
    axes: str
    dtype: np.dtype


def resolve_inputs(inputs: list[str | Path], what: str = "input", allow_zarr: bool = False) -> list[Path]:
    """Expand files, folders (their ``*.tif``/``*.tiff``) and glob patterns into sorted image paths.

    With ``allow_zarr``, Zarr / OME-Zarr folders count as images: given directly, matched by a
    glob, or found (``*.zarr``) inside a given folder.
    """

    def is_image(f: Path) -> bool:
        return (f.is_file() and f.suffix.lower() in TIFF_SUFFIXES) or (allow_zarr and is_zarr_path(f))

    kinds = ".tif/.tiff" + (" or .zarr" if allow_zarr else "")
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if allow_zarr and is_zarr_path(p):
            found.append(p)
        elif p.is_dir():
            files = sorted(f for f in p.iterdir() if is_image(f))
            if not files:
                raise DataError(f"{what} folder {p} contains no {kinds} files")
            found.extend(files)
        elif p.is_file():
            found.append(p)
        elif any(ch in str(item) for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(item)) if Path(m).is_file() or is_image(Path(m)))
            if not matches:
                raise DataError(f"{what} pattern {item!r} matches no file")
            found.extend(matches)
        else:
            raise DataError(f"{what} {item} does not exist")
    if not found:
        raise DataError(f"no {what} files given")
    return found


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Silence tifffile's own log warnings about corrupt files: our error says it in one line."""
    tiff_logger = logging.getLogger("tifffile")
    level = tiff_logger.level
    tiff_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        tiff_logger.setLevel(level)


def metadata_axes(tif: tifffile.TiffFile) -> str | None:
    """The first series' axes in kit letters from OME / ImageJ / tifffile metadata, if usable."""
    series = tif.series[0]
    if not (tif.is_ome or tif.is_imagej or tif.is_shaped):
        return None
    axes = "".join(FROM_TIFFFILE.get(a, "?") for a in series.axes.upper())
    if "?" in axes:
        return None
    if len(set(axes)) != len(axes):
        return None
    return axes


def read_image(path: Path, axes: str | None = None, spatial_ndim: int = 2) -> ImageFile:
    """Read a TIFF as float32 with its axes; raise :class:`DataError` on anything unusable.

    Parameters
    ----------
    path
        TIFF file.
    axes
        Axes string overriding the file's metadata (e.g. ``"SCYX"``).
    spatial_ndim
        2 or 3: used only to guess axes for files without usable metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"input {path} does not exist")
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            if not tif.series or not tif.pages:
                raise DataError(f"{path} is not a readable TIFF (it contains no image)")
            raw = tif.series[0].asarray()
            meta_axes = metadata_axes(tif)
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt / non-TIFF files
        raise DataError(f"{path} is not a readable TIFF ({type(exc).__name__}: {exc})") from None
    if raw.dtype.kind not in "uif":
        raise DataError(f"{path} has unsupported dtype {raw.dtype} (need integer or float pixels)")
    axes = resolve_axes(axes, meta_axes, raw.shape, spatial_ndim)
    data = raw.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        raise DataError(f"{path} contains NaN or Inf pixels")
    return ImageFile(path=path, data=data, axes=axes, dtype=raw.dtype)


def _imagej_order(axes: str) -> bool:
    """Whether ImageJ can hold these axes as they are (a subsequence of TZCYX, float32 included)."""
    order = "TZCYX"
    positions = [order.find(a) for a in axes]
    return -1 not in positions and positions == sorted(positions)


def write_image(
    path: Path,
    data: np.ndarray,
    axes: str,
    overwrite: bool = False,
    dtype: np.dtype | type = np.float32,
    pixel_size: PixelSize | None = None,
) -> None:
    """Write ``data`` as a TIFF (float32 unless ``dtype`` says otherwise) with ``axes`` metadata, atomically.

    A resolution unit of CENTIMETER is written because some consumers (Grand Challenge)
    reject TIFFs whose unit is NONE, which is tifffile's default. ``pixel_size``: record it, as
    an ImageJ hyperstack where the axes allow (X/Y resolution, ``unit``, Z ``spacing``: what Fiji
    reads), else as resolution tags in pixels per cm (:mod:`ai4life_kit.data.pixel_size`).
    """
    axes = validate_axes(axes, data.ndim)
    tf_axes = "".join(TO_TIFFFILE[a] for a in axes)
    if pixel_size is not None and _imagej_order(axes):
        # An ImageJ hyperstack: the only way Fiji reads a Z step (ImageJ's "spacing").
        physical = pixel_size.imagej_arguments()
        with atomic_path(Path(path), overwrite) as tmp:
            tifffile.imwrite(
                tmp,
                np.ascontiguousarray(data, dtype=dtype),
                imagej=True,
                metadata={"axes": tf_axes, **physical["metadata"]},
                resolution=physical["resolution"],
            )
        return
    resolution = (1.0, 1.0)  # the kit's default: no physical size
    if pixel_size is not None and pixel_size.known and pixel_size.unit == "um":
        x = pixel_size.x
        resolution = (1e4 / x, 1e4 / (pixel_size.y or x))  # pixels per cm; no Z step outside ImageJ
    with atomic_path(Path(path), overwrite) as tmp:
        tifffile.imwrite(
            tmp,
            np.ascontiguousarray(data, dtype=dtype),
            metadata={"axes": tf_axes},
            resolution=resolution,
            resolutionunit="CENTIMETER",
            photometric="minisblack",
        )
