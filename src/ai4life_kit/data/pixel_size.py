"""Physical pixel sizes in TIFF metadata: read from inputs, written with resampled outputs.

Restoration that changes the sampling (isotropic reconstruction, super-resolution) must say what
the new sampling is, or a user measuring distances in Fiji gets them wrong by the factor. The
sizes travel the way Fiji and tifffile read them: X and Y as the TIFF resolution tags (pixels per
centimetre, the unit some consumers insist on), Z as ImageJ's ``spacing`` (in ImageJ metadata,
or in tifffile's JSON description, which this module writes next to ``axes``), with ``unit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["PixelSize", "read_pixel_size"]

_MICRONS_PER_CM = 1e4
_MICRON_NAMES = ("um", "micron", "microns", "\u00b5m", "\u03bcm", "\\u00b5m")


@dataclass(frozen=True)
class PixelSize:
    """Pixel size in micrometres per axis (``None``: not recorded in the file)."""

    x: float | None = None
    y: float | None = None
    z: float | None = None

    def scaled(self, z: float = 1.0, y: float = 1.0, x: float = 1.0) -> PixelSize:
        """Sizes divided by the upsampling factor of each axis (``None`` stays ``None``)."""
        return PixelSize(
            None if self.x is None else self.x / x,
            None if self.y is None else self.y / y,
            None if self.z is None else self.z / z,
        )

    def tiff_arguments(self) -> dict:
        """``resolution`` (pixels per cm) and ``spacing`` / ``unit`` metadata for :func:`write_image`.

        Without a lateral size the resolution stays the kit's default (1 pixel per cm, which
        :func:`read_pixel_size` reads as "not recorded") and the unit is ``pixel``: ``spacing`` is
        then the axial step in lateral pixels (1.0 once isotropic).
        """
        known = self.x is not None
        x = self.x if known else None
        y = self.y if self.y is not None else x
        resolution = (_MICRONS_PER_CM / x, _MICRONS_PER_CM / y) if known else (1.0, 1.0)
        meta: dict = {"unit": "um" if known else "pixel"}
        if self.z is not None:
            meta["spacing"] = self.z
        return {"resolution": resolution, "metadata": meta}


def read_pixel_size(path: Path) -> PixelSize:
    """The pixel size a TIFF records (ImageJ, or the kit's outputs); ``None`` per axis it does not record.

    Resolution tags at the TIFF default (1 pixel per unit) or without a unit are no physical
    size. Z is ImageJ's ``spacing`` (ImageJ metadata or tifffile's JSON description); with unit
    ``pixel`` it is in lateral pixels, and X and Y are reported as 1.0 (pixels) so ratios hold.
    """
    import json

    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        unit = int(getattr(page.tags.get("ResolutionUnit"), "value", 1))
        meta = dict(tif.imagej_metadata or {})
        if not meta and (page.description or "").startswith("{"):
            try:
                meta = json.loads(page.description)
            except ValueError:
                meta = {}
        sizes: dict[str, float | None] = {"XResolution": None, "YResolution": None}
        # ImageJ leaves the TIFF unit at NONE and names it in its own metadata (pixels per micron)
        microns = {2: 25400.0, 3: _MICRONS_PER_CM}.get(unit)
        if unit == 1 and str(meta.get("unit", "")).lower() in _MICRON_NAMES:
            microns = 1.0
        if microns is not None:
            for name in sizes:
                tag = page.tags.get(name)
                num, den = tag.value if tag is not None else (0, 0)
                if num and den and num != den:
                    sizes[name] = microns * den / num
    x, y = sizes["XResolution"], sizes["YResolution"]
    z = float(meta["spacing"]) if "spacing" in meta else None
    if meta.get("unit") == "pixel" and x is None:
        x = y = 1.0
    return PixelSize(x, y if y is not None else x, z)
