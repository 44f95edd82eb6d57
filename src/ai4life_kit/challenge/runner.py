"""The entry point of a submission container: ``ai4life-kit challenge run``.

It finds every input of both tracks (:func:`~ai4life_kit.challenge.contract.find_cases`),
denoises each with the packaged model(s) and writes one float32 TIFF of exactly the input's shape
per input. A case that fails (a corrupt file, an unexpected number of dimensions, a model error,
no memory) is reported with its reason and the others still run; the exit code is then 1.

Channels: a model whose channel count matches the data is applied as is; a 1-channel model is
applied to each channel of a multi-channel stack separately (channel-wise, the usual MDC24
choice); a list of 1-channel models (``--model`` repeated) is applied one per channel, in order.

Any object with ``.n_channels`` and ``.predict(array, axes, **options)`` returning a float32 array
of the input's shape works as a model (:class:`ai4life_kit.prediction.Predictor` in practice),
so this module is tested without torch.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ai4life_kit.challenge.contract import (
    DEFAULT_CHALLENGE,
    Case,
    Challenge,
    axes_for,
    find_cases,
    get_challenge,
    output_path,
)
from ai4life_kit.errors import Ai4LifeKitError, DataError, ModelLoadError, OutputExistsError, UserInputError

__all__ = [
    "DEFAULT_INPUT_ROOT",
    "DEFAULT_MODEL_DIR",
    "DEFAULT_OUTPUT_ROOT",
    "SUMMARY_PREFIX",
    "CaseResult",
    "RunReport",
    "SupportsPredict",
    "channel_plan",
    "denoise",
    "load_models",
    "resolve_model_paths",
    "run_cases",
    "self_test",
]

DEFAULT_MODEL_DIR = Path("/opt/app/model")
"""Where a submission image keeps its model zip(s)."""
DEFAULT_INPUT_ROOT = Path("/input")
DEFAULT_OUTPUT_ROOT = Path("/output")
SUMMARY_PREFIX = "ai4life-kit-summary: "
"""The last line of a run: one JSON object (read back by ``challenge test``)."""
MAX_CHUNK_PIXELS = 2**25
"""Samples are denoised in chunks of at most this many pixels (128 MiB float32) to bound memory."""

Log = Callable[[str], None]


class SupportsPredict(Protocol):
    """What the runner needs from a model."""

    n_channels: int

    def predict(self, array: np.ndarray, axes: str, **options: Any) -> np.ndarray: ...


@dataclass
class CaseResult:
    """What happened to one input."""

    case: Case
    output: Path
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RunReport:
    """Every case of a run; ``exit_code`` is 0 only when all of them were written."""

    results: list[CaseResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.ok]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> dict[str, Any]:
        return {
            "cases": len(self.results),
            "written": len(self.results) - len(self.failed),
            "failed": len(self.failed),
            "results": [
                {
                    "input": str(r.case.path),
                    "track": r.case.track.name,
                    "output": str(r.output),
                    "shape": list(r.shape) if r.shape else None,
                    "dtype": r.dtype,
                    "seconds": round(r.seconds, 3),
                    "error": r.error,
                }
                for r in self.results
            ],
        }


# -- models ---------------------------------------------------------------------------------------


def resolve_model_paths(models: Sequence[Path] | None) -> list[Path]:
    """Model zips in channel order; a folder stands for its ``*.zip`` files sorted by name."""
    given = list(models) if models else [DEFAULT_MODEL_DIR]
    paths: list[Path] = []
    for p in map(Path, given):
        try:
            p.stat()
        except FileNotFoundError:
            pass
        except OSError as exc:  # e.g. a folder the container's user may not enter
            raise ModelLoadError(f"cannot access model {p}: {exc.strerror} (user id {os.getuid()})") from None
        if p.is_dir():
            zips = sorted(f for f in p.glob("*.zip") if f.is_file())
            if not zips:
                raise ModelLoadError(f"model folder {p} holds no .zip model package (pass --model ZIP)")
            paths += zips
        elif p.is_file():
            paths.append(p)
        else:
            hint = " (outside a submission image, pass --model ZIP)" if not models else ""
            raise ModelLoadError(f"model {p} does not exist{hint}")
    return paths


def load_models(
    paths: Sequence[Path], device: str = "cpu", challenge: str | Challenge = DEFAULT_CHALLENGE
) -> list[SupportsPredict]:
    """Load bioimage.io zips with :class:`ai4life_kit.prediction.Predictor` and check they fit ``challenge``.

    MDC stacks take 2D models; CIDC25's videos take a 2D model (frame by frame) or a 3D one (time
    read as the third axis: space-time denoising).
    """
    from ai4life_kit.prediction import Predictor

    chal = challenge if isinstance(challenge, Challenge) else get_challenge(challenge)

    models: list[SupportsPredict] = []
    for path in paths:
        try:
            model = Predictor.from_bioimageio(path, device=device)
        except Ai4LifeKitError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot load model {path}: {type(exc).__name__}: {exc}") from None
        dims = getattr(model, "spatial_ndim", 2)
        if dims not in chal.model_dims:
            takes = " or ".join(f"{d}D" for d in chal.model_dims)
            raise ModelLoadError(f"model {path} is {dims}D; {chal.name}'s stacks need a {takes} model")
        models.append(model)
    if len(models) > 1 and any(getattr(m, "spatial_ndim", 2) == 3 for m in models):
        raise ModelLoadError("a space-time (3D) model denoises the whole video: give one model, not one per channel")
    if len(models) > 1:
        multi = [f"{p.name} ({m.n_channels})" for p, m in zip(paths, models, strict=True) if m.n_channels != 1]
        if multi:
            raise ModelLoadError(
                "several models are applied one per channel, so each must have 1 channel; not: " + ", ".join(multi)
            )
    return models


def channel_plan(
    models: Sequence[SupportsPredict], n_channels: int, source: Path | str = "input"
) -> list[tuple[SupportsPredict, int | None]]:
    """Which model denoises which channel (``None``: the model takes all channels at once)."""
    if len(models) == 1:
        model = models[0]
        if model.n_channels == n_channels:
            return [(model, None)]
        if model.n_channels == 1:
            return [(model, c) for c in range(n_channels)]
        raise DataError(f"{source} has {n_channels} channel(s) but the model expects {model.n_channels}")
    if len(models) != n_channels:
        raise DataError(f"{source} has {n_channels} channel(s) but {len(models)} per-channel models were given")
    return [(model, c) for c, model in enumerate(models)]


def denoise(
    models: Sequence[SupportsPredict],
    data: np.ndarray,
    axes: str,
    *,
    source: Path | str = "input",
    max_chunk_pixels: int = MAX_CHUNK_PIXELS,
    **options: Any,
) -> np.ndarray:
    """Denoise ``data`` (axes ``axes``) into a new float32 array of the same shape.

    Samples (``S``) are processed in chunks of at most ``max_chunk_pixels`` pixels; each chunk
    goes through :func:`channel_plan`. ``options`` are passed to ``predict`` (``tta``, ``batch_size``).
    """
    c_axis = axes.find("C")
    plan = channel_plan(models, data.shape[c_axis] if c_axis >= 0 else 1, source)
    out = np.empty(data.shape, dtype=np.float32)
    s_axis = axes.find("S")
    n_samples = data.shape[s_axis] if s_axis >= 0 else 1
    per_sample = max(1, data.size // max(n_samples, 1))
    step = max(1, max_chunk_pixels // per_sample)
    for start in range(0, n_samples, step):
        index: list[Any] = [slice(None)] * data.ndim
        if s_axis >= 0:
            index[s_axis] = slice(start, start + step)
        for model, channel in plan:
            sub, sub_axes = list(index), axes
            if channel is not None:
                sub[c_axis] = channel
                sub_axes = axes.replace("C", "")
            block = np.ascontiguousarray(data[tuple(sub)])
            pred = np.asarray(model.predict(block, sub_axes, **options))
            if pred.shape != block.shape:
                raise Ai4LifeKitError(f"the model returned shape {pred.shape} for a block of shape {block.shape}")
            out[tuple(sub)] = pred
    return out


# -- cases ----------------------------------------------------------------------------------------


def _peek_shape(path: Path) -> tuple[int, ...]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return tuple(tif.series[0].shape)
    except Exception as exc:  # tifffile raises many types for corrupt / non-TIFF files
        raise DataError(f"{path} is not a readable TIFF ({type(exc).__name__}: {exc})") from None


def _denoise_case(models: Sequence[SupportsPredict], case: Case, out: Path, result: CaseResult, **options: Any) -> None:
    from ai4life_kit.data.tiff_io import read_image, write_image

    axes = axes_for(case.track, _peek_shape(case.path), case.path)
    image = read_image(case.path, axes=axes)
    result.shape, result.dtype = tuple(image.data.shape), str(image.dtype)
    denoised = denoise(models, image.data, model_axes(models, case, image.data.shape), source=case.path, **options)
    if not np.isfinite(denoised).all():
        raise Ai4LifeKitError(f"the model produced {int((~np.isfinite(denoised)).sum())} NaN/Inf values")
    write_image(out, denoised, axes, overwrite=True)


def model_axes(models: Sequence[SupportsPredict], case: Case, shape: tuple[int, ...]) -> str:
    """The axes the model reads a case with: a video's ``T`` as samples (2D model) or as ``Z`` (3D model).

    Raises
    ------
    DataError
        A video with fewer frames than a space-time model's temporal window (its size multiple).
    """
    axes = case.track.axes_by_ndim[len(shape)]
    if not case.track.temporal:
        return axes
    if getattr(models[0], "spatial_ndim", 2) != 3:
        return axes.replace("T", "S")  # frame by frame, in chunks of frames
    window = int(getattr(models[0], "multiple", 1))
    if shape[0] < window:
        raise DataError(
            f"{case.path} has {shape[0]} frame(s); the space-time model needs at least {window} (its temporal window)"
        )
    return axes.replace("T", "Z")


def _prepare_output(output_root: Path, outputs: list[Path], overwrite: bool) -> None:
    if not overwrite:
        existing = [p for p in outputs if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise OutputExistsError(f"{existing[0]} already exists{more} (use --overwrite to replace)")
    for folder in sorted({p.parent for p in outputs}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserInputError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from None
        if not os.access(folder, os.W_OK):
            raise UserInputError(f"the output folder {folder} is not writable by user id {os.getuid()}")


def run_cases(
    models: Sequence[SupportsPredict],
    input_root: Path = DEFAULT_INPUT_ROOT,
    output_root: Path = DEFAULT_OUTPUT_ROOT,
    *,
    overwrite: bool = False,
    challenge: str | Challenge = DEFAULT_CHALLENGE,
    log: Log = print,
    log_error: Log | None = None,
    **options: Any,
) -> RunReport:
    """Denoise every case under ``input_root`` into ``output_root``; never stop at a failed case.

    Raises :class:`DataError` when there is no input at all and :class:`OutputExistsError` when an
    output exists without ``overwrite``; every other problem is recorded per case.
    """
    log_error = log_error or log
    cases = find_cases(input_root, challenge)
    outputs = [output_path(output_root, c) for c in cases]
    _prepare_output(output_root, outputs, overwrite)
    by_track = Counter(c.track.name for c in cases)
    log(f"found {len(cases)} case(s): " + ", ".join(f"{n} {t}" for t, n in by_track.items()))
    report = RunReport()
    for i, (case, out) in enumerate(zip(cases, outputs, strict=True), start=1):
        result = CaseResult(case=case, output=out)
        start = time.perf_counter()
        try:
            _denoise_case(models, case, out, result, **options)
        except Exception as exc:  # one bad case must not stop the others
            result.error = str(exc) if isinstance(exc, Ai4LifeKitError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, Ai4LifeKitError):
                log_error("".join(traceback.format_exception(exc)).rstrip())
        result.seconds = time.perf_counter() - start
        report.results.append(result)
        what = f"[{i}/{len(cases)}] {case.track.name} {case.path.name}"
        if result.ok:
            log(f"{what} {result.shape} {result.dtype} -> {out} ({result.seconds:.2f} s)")
        else:
            log_error(f"{what} FAILED: {result.error}")
    n_failed = len(report.failed)
    if n_failed:
        names = ", ".join(r.case.path.name for r in report.failed)
        log_error(f"{n_failed} of {len(cases)} case(s) failed: {names}")
    else:
        folders = ", ".join(str(f) for f in sorted({o.parent for o in outputs}))
        log(f"all {len(cases)} case(s) written to {folders}")
    log(SUMMARY_PREFIX + json.dumps(report.summary()))
    return report


def self_test(models: Sequence[SupportsPredict], log: Log = print, **options: Any) -> None:
    """Denoise a small random stack of odd size with every model (a build-time smoke test)."""
    rng = np.random.default_rng(0)
    n_channels = len(models) if len(models) > 1 else models[0].n_channels
    if getattr(models[0], "spatial_ndim", 2) == 3:  # a space-time model: a short odd-sized video, T as Z
        data, axes = rng.normal(100.0, 10.0, size=(1, 21, 75, 61)).astype(np.float32), "CZYX"
    else:
        data, axes = rng.normal(100.0, 10.0, size=(2, n_channels, 75, 61)).astype(np.float32), "SCYX"
    start = time.perf_counter()
    out = denoise(models, data, axes, source="self-test stack", **options)
    if out.shape != data.shape or out.dtype != np.float32 or not np.isfinite(out).all():
        raise Ai4LifeKitError(f"self-test failed: output {out.shape} {out.dtype} for input {data.shape}")
    log(f"self-test passed: {data.shape} -> {out.shape} float32 in {time.perf_counter() - start:.2f} s")


def environment_line(paths: Sequence[Path], models: Sequence[SupportsPredict], device: str) -> str:
    import ai4life_kit

    torch = sys.modules.get("torch")
    torch_info = f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ""
    described = ", ".join(f"{p.name} ({m.n_channels} channel(s))" for p, m in zip(paths, models, strict=True))
    return f"ai4life-kit {ai4life_kit.__version__}{torch_info}, device {device}, model(s): {described}"
