"""The AI4Life denoising challenges' contracts on Grand Challenge: one table, :data:`CHALLENGES`.

One place for what a submission must do, used by the entry point, the build context, the
container test and the unit tests:

- ``mdc24`` (Microscopy Denoising Challenge 2024, noisy-only training data): inputs
  ``/input/images/image-stack-structured-noise/*.tif`` (structured-noise leaderboards, ``(S, Y,
  X)`` stacks) and ``/input/images/image-stack-unstructured-noise/*.tif`` (unstructured, ``(S,
  C, Y, X)``); outputs ``/output/images/image-stack-denoised/<input stem>.tif``;
- ``mdc25`` (supervised: noisy and clean training pairs): MDC24's unstructured folders;
- ``cidc25`` (Calcium Imaging Denoising Challenge 2025, noisy-only training videos): inputs
  ``/input/images/stacked-neuron-images-with-noise/*.tif``, ``(T, Y, X)`` two-photon videos
  (int16); outputs ``/output/images/stacked-neuron-images-with-reduced-noise/<input stem>.tif``;
  ranked by stSNR (:mod:`ai4life_kit.metrics_temporal`).

For all of them: ``*.tiff`` inputs are accepted too; ``/input`` is read-only; outputs are float32,
exactly the input's shape, the input's intensity scale, with a TIFF resolution unit of INCH or
CENTIMETER (Grand Challenge rejects NONE, tifffile's default); the process exits non-zero when any
case fails. The 2025 templates also describe their inputs in ``/input/inputs.json`` (a list of
``{"image": {"name"}, "interface": {"slug", "relative_path"}}``): when that file is there the
inputs are found through it, otherwise the known folders are scanned. Not known here (so both
are handled): whether MDC25 keeps MDC24's structured folder (it is not listed), and whether
CIDC25 videos ever come with a channel axis (refused: the contract says ``T x Y x X``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ai4life_kit.errors import DataError, UserInputError

__all__ = [
    "ACCEPTED_RESOLUTION_UNITS",
    "CHALLENGES",
    "DEFAULT_CHALLENGE",
    "INPUTS_JSON",
    "INPUT_SUFFIXES",
    "OUTPUT_DIR",
    "TRACKS",
    "Case",
    "Challenge",
    "Track",
    "get_challenge",
    "axes_for",
    "check_output",
    "find_cases",
    "output_path",
]

INPUT_SUFFIXES = (".tif", ".tiff")
OUTPUT_DIR = "images/image-stack-denoised"
"""MDC's output folder, relative to the output root (``/output``). The template README's ``/input/...`` is a typo."""
OUTPUT_INTERFACE = "stacked-images-with-reduced-noise"
INPUTS_JSON = "inputs.json"
"""The 2025 templates' description of the inputs, at the input root."""
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
    output_dir: str = OUTPUT_DIR
    """Relative to the output root (``/output``)."""
    output_interface: str = OUTPUT_INTERFACE
    temporal: bool = False
    """The first axis is time (``T``): a 3D model reads it as its third axis (space-time denoising)."""


_STRUCTURED = Track(
    name="structured",
    input_dir="images/image-stack-structured-noise",
    interface="stacked-images-subject-to-structured-noise",
    axes_by_ndim={3: "SYX", 2: "YX"},
    layout="(S, Y, X)",
)
_UNSTRUCTURED = Track(
    name="unstructured",
    input_dir="images/image-stack-unstructured-noise",
    interface="stacked-images-subject-to-unstructured-noise",
    # A 3D file in the unstructured track is one (C, Y, X) sample: with a channel-wise model
    # (C, Y, X) and (S, Y, X) give the same result, and a multi-channel model needs C.
    axes_by_ndim={4: "SCYX", 3: "CYX", 2: "YX"},
    layout="(S, C, Y, X)",
)
_CALCIUM = Track(
    name="calcium",
    input_dir="images/stacked-neuron-images-with-noise",
    interface="stacked-neuron-images-with-noise",
    axes_by_ndim={3: "TYX"},
    layout="(T, Y, X)",
    output_dir="images/stacked-neuron-images-with-reduced-noise",
    output_interface="stacked-neuron-images-with-reduced-noise",
    temporal=True,
)


@dataclass(frozen=True)
class Challenge:
    """One AI4Life challenge: its tracks (input folders), what trains a model for it, how it is ranked."""

    name: str
    title: str
    tracks: dict[str, Track]
    training_data: str
    metrics: str
    model_dims: tuple[int, ...] = (2,)
    """Dimensions of the models it takes: 2D everywhere; 3D for videos (T read as the third axis)."""


CHALLENGES: dict[str, Challenge] = {
    "mdc24": Challenge(
        name="mdc24",
        title="AI4Life Microscopy Denoising Challenge 2024",
        tracks={"structured": _STRUCTURED, "unstructured": _UNSTRUCTURED},
        training_data="noisy stacks only (self-supervised: N2V, N2V2, structN2V)",
        metrics="PSNR, SSIM, SI-PSNR, MS-SSIM against hidden high-SNR images",
    ),
    "mdc25": Challenge(
        name="mdc25",
        title="AI4Life Microscopy Denoising Challenge 2025 (supervised)",
        tracks={"unstructured": _UNSTRUCTURED},
        training_data="pairs of noisy and clean images (supervised: CARE; Noise2Noise for noisy pairs)",
        metrics="PSNR / SSIM family, as MDC24",
    ),
    "cidc25": Challenge(
        name="cidc25",
        title="AI4Life Calcium Imaging Denoising Challenge 2025",
        tracks={"calcium": _CALCIUM},
        training_data="noisy two-photon videos only (self-supervised; space-time N2V over T, Y, X)",
        metrics="stSNR (alpha spatial + (1 - alpha) temporal SNR); PSNR with the 3rd-97th percentile range",
        model_dims=(2, 3),
    ),
}
DEFAULT_CHALLENGE = "mdc24"
TRACKS: dict[str, Track] = CHALLENGES[DEFAULT_CHALLENGE].tracks
"""MDC24's tracks (the default challenge)."""


def get_challenge(name: str) -> Challenge:
    """The challenge called ``name`` (case-insensitive); a one-line error naming the known ones."""
    key = name.strip().lower()
    if key not in CHALLENGES:
        raise UserInputError(f"unknown challenge {name!r}; use one of {', '.join(CHALLENGES)}")
    return CHALLENGES[key]


@dataclass(frozen=True)
class Case:
    """One input file found under the input root."""

    path: Path
    track: Track

    @property
    def output_name(self) -> str:
        return self.path.stem + ".tif"


def _cases_from_inputs_json(input_root: Path, challenge: Challenge) -> list[Case]:
    """The cases ``/input/inputs.json`` lists for ``challenge``'s interfaces (the 2025 templates' way)."""
    import json

    path = input_root / INPUTS_JSON
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(entries, list):
        raise DataError(f"{path} must hold a list of inputs, not {type(entries).__name__}")
    by_slug = {t.interface: t for t in challenge.tracks.values()}
    cases, slugs = [], []
    for entry in entries:
        interface = entry.get("interface") if isinstance(entry, dict) else None
        image = entry.get("image") if isinstance(entry, dict) else None
        if not isinstance(interface, dict) or not isinstance(interface.get("slug"), str):
            raise DataError(f"{path}: an entry without interface.slug: {str(entry)[:120]}")
        slugs.append(interface["slug"])
        track = by_slug.get(interface["slug"])
        if track is None:
            continue  # another socket (e.g. metadata): not an image for this challenge
        folder = input_root / str(interface.get("relative_path") or track.input_dir)
        if isinstance(image, dict) and isinstance(image.get("name"), str):
            found = [folder / Path(image["name"]).name]
        else:  # no file named: every image in the socket's folder
            found = sorted(p for p in folder.iterdir() if p.suffix.lower() in INPUT_SUFFIXES) if folder.is_dir() else []
        for p in found:
            if not p.is_file():
                raise DataError(f"{path} lists {p}, which does not exist")
            cases.append(Case(p, track))
    if not cases:
        wanted = ", ".join(by_slug)
        listed = ", ".join(slugs) or "nothing"
        raise DataError(f"{path} lists no input of {challenge.name} ({wanted}); it lists {listed}")
    return cases


def find_cases(input_root: Path, challenge: str | Challenge = DEFAULT_CHALLENGE) -> list[Case]:
    """Every input of ``challenge``: through ``/input/inputs.json`` when present, else every ``*.tif``/
    ``*.tiff`` in its tracks' input folders, sorted; raise when there is none.

    Two inputs that would write the same output name (``a.tif`` and ``a.tiff``, or the same
    name in both tracks) are an error too, naming both files.
    """
    chal = challenge if isinstance(challenge, Challenge) else get_challenge(challenge)
    input_root = Path(input_root)
    try:
        if not input_root.is_dir():
            raise DataError(f"input root {input_root} does not exist or is not a folder")
        if (input_root / INPUTS_JSON).is_file():
            cases = _cases_from_inputs_json(input_root, chal)
        else:
            cases = []
            for track in chal.tracks.values():
                folder = input_root / track.input_dir
                if folder.is_dir():
                    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in INPUT_SUFFIXES and p.is_file())
                    cases += [Case(p, track) for p in found]
        if not cases:
            looked = " and ".join(str(input_root / t.input_dir) for t in chal.tracks.values())
            present = sorted(str(p.relative_to(input_root)) for p in input_root.rglob("*") if p.is_file())[:5]
            found_text = f"; files present: {', '.join(present)}" if present else "; the input root is empty"
            raise DataError(f"no .tif/.tiff input found in {looked} ({chal.name}){found_text}")
    except OSError as exc:  # e.g. a mount the container's user may not read
        raise DataError(f"cannot read the inputs under {input_root}: {exc.strerror} ({exc.filename})") from None
    seen: dict[str, Path] = {}
    for case in cases:
        other = seen.setdefault(case.track.output_dir + "/" + case.output_name, case.path)
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
    return Path(output_root) / case.track.output_dir / case.output_name


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
