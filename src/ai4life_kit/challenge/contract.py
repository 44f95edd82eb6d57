"""The AI4Life denoising challenge contract on Grand Challenge (MDC24; MDC25 uses the same folders).

One place for what a submission must do, used by the entry point, the build context, the
container test and the unit tests:

- inputs: ``/input/images/image-stack-structured-noise/*.tif`` (structured-noise leaderboards,
  ``(S, Y, X)`` stacks) and ``/input/images/image-stack-unstructured-noise/*.tif`` (unstructured,
  ``(S, C, Y, X)``); ``*.tiff`` is accepted too; ``/input`` is read-only;
- outputs: ``/output/images/image-stack-denoised/<input stem>.tif``, one per input: float32,
  exactly the input's shape, the input's intensity scale, a TIFF resolution unit of INCH or
  CENTIMETER (Grand Challenge rejects NONE, tifffile's default);
- the process exits non-zero when any case fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ai4life_kit.errors import DataError

__all__ = [
    "ACCEPTED_RESOLUTION_UNITS",
    "INPUT_SUFFIXES",
    "OUTPUT_DIR",
    "TRACKS",
    "Case",
    "Track",
    "axes_for",
    "check_output",
    "find_cases",
    "output_path",
]

INPUT_SUFFIXES = (".tif", ".tiff")
OUTPUT_DIR = "images/image-stack-denoised"
"""Relative to the output root (``/output``). The template README's ``/input/...`` is a typo."""
OUTPUT_INTERFACE = "stacked-images-with-reduced-noise"
ACCEPTED_RESOLUTION_UNITS = (2, 3)
"""TIFF ResolutionUnit values Grand Challenge accepts: 2 = INCH, 3 = CENTIMETER (1 = NONE is rejected)."""


@dataclass(frozen=True)
class Track:
    """One kind of leaderboard: where its inputs appear and how their axes read."""

    name: str
    input_dir: str
    """Relative to the input root (``/input``)."""
    interface: str
    """The Grand Challenge input interface (what the algorithm form lists)."""
    axes_by_ndim: dict[int, str]
    """Axes of an input file by its number of dimensions; anything else is an error."""
    layout: str
    """The documented layout, for messages and READMEs."""


TRACKS: dict[str, Track] = {
    "structured": Track(
        name="structured",
        input_dir="images/image-stack-structured-noise",
        interface="stacked-images-subject-to-structured-noise",
        axes_by_ndim={3: "SYX", 2: "YX"},
        layout="(S, Y, X)",
    ),
    "unstructured": Track(
        name="unstructured",
        input_dir="images/image-stack-unstructured-noise",
        interface="stacked-images-subject-to-unstructured-noise",
        # A 3D file in the unstructured track is one (C, Y, X) sample: with a channel-wise model
        # (C, Y, X) and (S, Y, X) give the same result, and a multi-channel model needs C.
        axes_by_ndim={4: "SCYX", 3: "CYX", 2: "YX"},
        layout="(S, C, Y, X)",
    ),
}


@dataclass(frozen=True)
class Case:
    """One input file found under the input root."""

    path: Path
    track: Track

    @property
    def output_name(self) -> str:
        return self.path.stem + ".tif"


def find_cases(input_root: Path) -> list[Case]:
    """Every ``*.tif``/``*.tiff`` in both tracks' input folders, sorted; raise when there is none.

    Two inputs that would write the same output name (``a.tif`` and ``a.tiff``, or the same
    name in both tracks) are an error too, naming both files.
    """
    input_root = Path(input_root)
    try:
        if not input_root.is_dir():
            raise DataError(f"input root {input_root} does not exist or is not a folder")
        cases: list[Case] = []
        for track in TRACKS.values():
            folder = input_root / track.input_dir
            if folder.is_dir():
                found = sorted(p for p in folder.iterdir() if p.suffix.lower() in INPUT_SUFFIXES and p.is_file())
                cases += [Case(p, track) for p in found]
        if not cases:
            looked = " and ".join(str(input_root / t.input_dir) for t in TRACKS.values())
            present = sorted(str(p.relative_to(input_root)) for p in input_root.rglob("*") if p.is_file())[:5]
            found_text = f"; files present: {', '.join(present)}" if present else "; the input root is empty"
            raise DataError(f"no .tif/.tiff input found in {looked}{found_text}")
    except OSError as exc:  # e.g. a mount the container's user may not read
        raise DataError(f"cannot read the inputs under {input_root}: {exc.strerror} ({exc.filename})") from None
    seen: dict[str, Path] = {}
    for case in cases:
        other = seen.setdefault(case.output_name, case.path)
        if other != case.path:
            raise DataError(f"{other} and {case.path} would both be written as {case.output_name}")
    return cases


def axes_for(track: Track, shape: tuple[int, ...], source: Path | str = "input") -> str:
    """The axes of an input of ``shape`` in ``track``; :class:`DataError` for unexpected dimensions."""
    axes = track.axes_by_ndim.get(len(shape))
    if axes is None:
        allowed = " or ".join(f"{n}D" for n in sorted(track.axes_by_ndim, reverse=True))
        raise DataError(
            f"{source} has shape {tuple(shape)} ({len(shape)}D); the {track.name} track expects "
            f"{track.layout} stacks ({allowed})"
        )
    return axes


def output_path(output_root: Path, case: Case) -> Path:
    return Path(output_root) / OUTPUT_DIR / case.output_name


def check_output(path: Path, expected_shape: tuple[int, ...]) -> list[str]:
    """Every way the TIFF at ``path`` breaks the output contract (empty list: it is fine)."""
    import tifffile

    path = Path(path)
    if not path.is_file():
        return [f"{path.name}: missing"]
    problems: list[str] = []
    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.series[0].asarray()
            tag = tif.pages[0].tags.get("ResolutionUnit")
            unit = int(tag.value) if tag is not None else None
    except Exception as exc:
        return [f"{path.name}: not a readable TIFF ({type(exc).__name__}: {exc})"]
    if tuple(data.shape) != tuple(expected_shape):
        problems.append(f"{path.name}: shape {tuple(data.shape)} != input shape {tuple(expected_shape)}")
    if data.dtype != np.float32:
        problems.append(f"{path.name}: dtype {data.dtype}, must be float32")
    if unit not in ACCEPTED_RESOLUTION_UNITS:
        shown = "missing" if unit is None else str(unit)
        problems.append(f"{path.name}: TIFF resolution unit {shown} (Grand Challenge needs 2=INCH or 3=CENTIMETER)")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        problems.append(f"{path.name}: {int((~np.isfinite(data)).sum())} NaN/Inf values")
    return problems
