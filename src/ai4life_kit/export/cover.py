"""The cover image of a package: input | output of the test tensors, side by side, one contrast stretch."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["COVER_MAX_BYTES", "write_cover"]

# bioimage.io shows covers at 2:1 and asks for files under 500 kB.
COVER_MAX_BYTES = 500_000
_PERCENTILES = (1.0, 99.8)


def _plane(tensor: np.ndarray, xz: bool = False, z_repeat: int = 1) -> np.ndarray:
    """``b, c, (z), y, x`` -> ``c, y, x``: the first batch item, the middle Z slice of a stack.

    ``xz``: the middle XZ section of a stack instead (``c, z, x``), each plane repeated
    ``z_repeat`` times, so that sections of different Z sampling are drawn at one scale.
    """
    a = np.asarray(tensor, dtype=np.float32)[0]
    if a.ndim == 3:
        return a
    if xz:
        return np.repeat(a[:, :, a.shape[2] // 2], z_repeat, axis=1)
    return a[:, a.shape[1] // 2]


def _shared_stretch(planes: list[np.ndarray]) -> list[tuple[float, float]]:
    """Per-channel ``(lo, hi)`` percentiles over all ``planes`` together (up to three channels).

    One stretch for input and output, so the panels compare like for like: a separate stretch
    per panel would hide how much the output's intensities differ from the input's.
    """
    ranges = []
    for c in range(min(3, planes[0].shape[0])):
        values = np.concatenate([p[c].ravel() for p in planes if c < p.shape[0]])
        lo, hi = (float(v) for v in np.percentile(values, _PERCENTILES))
        ranges.append((lo, hi if hi > lo else lo + 1.0))
    return ranges


def _to_display(plane: np.ndarray, ranges: list[tuple[float, float]]) -> np.ndarray:
    """``c, y, x`` float -> ``y, x`` (one channel: grey) or ``y, x, 3`` (composite) uint8."""
    chans = [np.clip((plane[c] - lo) / (hi - lo), 0, 1) for c, (lo, hi) in enumerate(ranges)]
    if len(chans) == 1:
        out = chans[0]
    elif len(chans) == 2:  # magenta / green: readable for colour-blind viewers too
        out = np.stack([chans[0], chans[1], chans[0]], axis=-1)
    else:
        out = np.stack(chans, axis=-1)
    return (out * 255).round().astype(np.uint8)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable with FreeType (Pillow >= 10.1)
    except (TypeError, ValueError, OSError):  # pragma: no cover - Pillow without FreeType
        return ImageFont.load_default()


def _render_cover(planes: list[np.ndarray], labels: Sequence[str], side: int):
    """The two panels side by side, each ``side`` pixels square, labelled in their top-left corner."""
    from PIL import Image, ImageDraw

    ranges = _shared_stretch(planes)
    displays = [_to_display(p, ranges) for p in planes]
    mode = "L" if displays[0].ndim == 2 else "RGB"
    canvas = Image.new(mode, (2 * side, side), 0)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(12, side // 14))
    gap = max(2, side // 128)  # a thin white separator between the panels
    for k, (disp, label) in enumerate(zip(displays, labels, strict=True)):
        h, w = disp.shape[:2]
        scale = side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # Enlarged pixels stay sharp (no invented smoothness); reduced ones are averaged.
        resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
        img = Image.fromarray(disp).resize(size, resample)
        x0, y0 = k * side + (side - size[0]) // 2, (side - size[1]) // 2
        canvas.paste(img, (x0, y0))
        pad = max(3, side // 64)
        box = draw.textbbox((k * side + 2 * pad, 2 * pad), label, font=font)
        draw.rectangle((box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad), fill=0)
        draw.text((k * side + 2 * pad, 2 * pad), label, fill=255 if mode == "L" else (255, 255, 255), font=font)
    draw.rectangle((side - gap // 2, 0, side + (gap - gap // 2) - 1, side - 1), fill=255 if mode == "L" else "white")
    return canvas


def write_cover(
    path: Path,
    test_input: np.ndarray,
    test_output: np.ndarray,
    side: int = 384,
    labels: Sequence[str] = ("input", "output (denoised)"),
    max_bytes: int = COVER_MAX_BYTES,
    axial_factor: int | None = None,
) -> Path:
    """A 2:1 PNG: input | output of the test tensors, with one contrast stretch, labelled.

    Parameters
    ----------
    path
        PNG to write.
    test_input, test_output
        Raw ``b, c, (z), y, x`` tensors; 3D shows the middle Z slice, two channels a
        magenta/green composite, three or more the first three as RGB.
    side
        Height of the cover (each panel is ``side`` pixels square); reduced until the file is
        under ``max_bytes`` (noise compresses badly).
    labels
        Text drawn on the two panels.
    axial_factor
        Isotropic reconstruction: the output has this many Z planes per input plane; both panels
        show the middle XZ section, the input's planes drawn this many times as tall.
    """
    if axial_factor:
        planes = [_plane(test_input, True, axial_factor), _plane(test_output, True)]
    else:
        planes = [_plane(test_input), _plane(test_output)]
    while True:
        buf = io.BytesIO()
        _render_cover(planes, labels, side).save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes or side <= 64:
            break
        side = max(64, int(side * 0.8))
    Path(path).write_bytes(buf.getvalue())
    return Path(path)
