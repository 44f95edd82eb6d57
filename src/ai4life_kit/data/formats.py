"""File formats the kit reads and writes: which paths are TIFF or Zarr, and tifffile's axis letters.

The bottom of the data layer: :mod:`~ai4life_kit.data.tiff_io`, :mod:`~ai4life_kit.data.sources`
and :mod:`~ai4life_kit.data.targets` all use it, and it imports none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ai4life_kit.errors import DataError

__all__ = ["FROM_TIFFFILE", "TIFF_SUFFIXES", "TO_TIFFFILE", "is_zarr_path", "require_zarr"]

TIFF_SUFFIXES = (".tif", ".tiff")
"""Suffixes (lower case) of the TIFF files the kit reads."""

FROM_TIFFFILE = {"S": "C", "C": "C", "I": "S", "Q": "?", "T": "T", "Z": "Z", "Y": "Y", "X": "X", "E": "C", "R": "S"}
"""tifffile letter -> kit letter. 'S' (RGB samples) is a channel; sequences are samples."""

TO_TIFFFILE = {"S": "I", "T": "T", "C": "C", "Z": "Z", "Y": "Y", "X": "X"}
"""kit letter -> tifffile letter for the shaped metadata the kit writes (round-trips via FROM_TIFFFILE)."""


def is_zarr_path(path: str | Path) -> bool:
    """A ``.zarr`` / ``.ome.zarr`` folder (or any folder with Zarr metadata)."""
    p = Path(path)
    if not p.is_dir():
        return False
    return p.suffix.lower() == ".zarr" or any((p / m).is_file() for m in ("zarr.json", ".zarray", ".zgroup"))


def require_zarr(path: Path, action: str = "writing") -> Any:
    """The ``zarr`` module, or a one-line :class:`DataError` saying how to install it."""
    try:
        import zarr
    except ImportError:
        raise DataError(f"{path}: {action} Zarr needs the zarr package: pip install 'ai4life-kit[zarr]'") from None
    return zarr
