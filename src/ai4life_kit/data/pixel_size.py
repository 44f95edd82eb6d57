"""Physical pixel sizes in TIFF metadata: read from inputs, written with resampled outputs.

Restoration that changes the sampling (isotropic reconstruction, super-resolution) must say what
the new sampling is, or a user measuring distances in Fiji gets them wrong by the factor. Sizes
are read the way Fiji and tifffile write them: ImageJ's metadata (``unit``, ``spacing`` for Z, X
and Y resolution in pixels per unit), or TIFF resolution tags in inches or centimetres; they are
written as ImageJ hyperstacks (what Fiji reads; :func:`ai4life_kit.data.tiff_io.write_image`).

A size is either physical (``unit="um"``) or, when the input recorded none, relative to the
lateral pixel (``unit="pixel"``: X and Y are 1, Z is the axial step in lateral pixels). A
relative size is never promoted to a physical one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["PixelSize", "read_pixel_size"]

# Micrometres per unit, for the units ImageJ and TIFF files name.
_UNITS = {
    "um": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "\u00b5m": 1.0,
    "\u03bcm": 1.0,
    "\\u00b5m": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
}
_TIFF_UNIT_MICRONS = {2: 25400.0, 3: 1e4}  # ResolutionUnit INCH, CENTIMETER


@dataclass(frozen=True)
class PixelSize:
    """Pixel size per axis in ``unit`` (``None``: not recorded).

    ``unit`` is ``"um"`` (micrometres) or ``"pixel"`` (relative to the lateral pixel, for inputs
    without a physical calibration).
    """

    x: float | None = None
    y: float | None = None
    z: float | None = None
    unit: str = "um"

    @property
    def known(self) -> bool:
        return self.x is not None

    def scaled(self, z: float = 1.0, y: float = 1.0, x: float = 1.0) -> PixelSize:
        """Sizes divided by the upsampling factor of each axis (``None`` stays ``None``)."""
        return PixelSize(
            None if self.x is None else self.x / x,
            None if self.y is None else self.y / y,
            None if self.z is None else self.z / z,
            self.unit,
        )

    def imagej_arguments(self) -> dict:
        """``resolution`` (pixels per unit) and the ImageJ ``unit`` / ``spacing`` metadata for tifffile."""
        x = self.x if self.x is not None else 1.0
        y = self.y if self.y is not None else x
        meta: dict = {"unit": "micron" if self.unit == "um" and self.known else "pixel"}
        if self.z is not None:
            meta["spacing"] = self.z
        return {"resolution": (1.0 / x, 1.0 / y), "metadata": meta}


def read_pixel_size(path: Path) -> PixelSize:
    """The pixel size a TIFF records; ``PixelSize()`` (nothing known) for files without one.

    ImageJ files: X and Y from the resolution tags in ImageJ's ``unit``, Z from ``spacing``; a unit
    it does not know (or ``pixel``) gives a relative size. Other TIFFs: X and Y from resolution tags
    in inches or centimetres, except the kit's own default of 1 pixel per centimetre, which
    records no size. A folder (Zarr) records none here.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        return PixelSize()
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        meta = dict(tif.imagej_metadata or {})
        per_unit = []
        for name in ("XResolution", "YResolution"):
            tag = page.tags.get(name)
            num, den = tag.value if tag is not None else (0, 0)
            per_unit.append(num / den if num and den else None)
        tiff_unit = int(getattr(page.tags.get("ResolutionUnit"), "value", 1))
    px, py = per_unit
    if meta:  # ImageJ: sizes in its unit, resolution in pixels per that unit
        unit = str(meta.get("unit", "")).strip().lower()
        microns = _UNITS.get(unit)
        z = float(meta["spacing"]) if "spacing" in meta else None
        if microns is None:  # "pixel", or a unit we cannot convert: relative to the lateral pixel
            x = 1.0 / px if px else 1.0
            return PixelSize(1.0, (1.0 / py) / x if py else 1.0, None if z is None else z / x, "pixel")
        return PixelSize(
            microns / px if px else None,
            microns / py if py else None,
            None if z is None else z * microns,
        )
    microns = _TIFF_UNIT_MICRONS.get(tiff_unit)
    if microns is None or px is None or (tiff_unit == 3 and px == 1.0 and py == 1.0):
        return PixelSize()  # no unit, or the kit's default resolution (1 pixel per cm)
    return PixelSize(microns / px, microns / py if py else microns / px, None)
