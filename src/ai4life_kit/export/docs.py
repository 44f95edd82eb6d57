"""Documentation (README.md with a ``## Validation`` section) and the cover image of a package."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.export.rundir import RunInfo

__all__ = [
    "ALGORITHMS",
    "COVER_MAX_BYTES",
    "AlgorithmInfo",
    "algorithm_info",
    "write_documentation",
    "write_cover",
    "validation_metrics",
]


@dataclass(frozen=True)
class AlgorithmInfo:
    """How an algorithm is named, tagged and cited in a package."""

    title: str
    tag: str
    cite_text: str
    doi: str | None = None
    url: str | None = None
    summary: str = ""


_N2V = AlgorithmInfo(
    title="Noise2Void (N2V)",
    tag="n2v",
    cite_text=(
        "Krull, A., Buchholz, T.-O., Jug, F. Noise2Void - Learning denoising from single noisy images. CVPR 2019."
    ),
    doi="10.1109/CVPR.2019.00223",
    summary="self-supervised blind-spot training on the noisy images only",
)
_N2V2 = AlgorithmInfo(
    title="N2V2",
    tag="n2v2",
    cite_text=(
        "Hoeck, E., Buchholz, T.-O., Brachmann, A., Jug, F., Freytag, A. N2V2 - Fixing Noise2Void checkerboard "
        "artifacts with modified sampling strategies and a tweaked network architecture. ECCV Workshops 2022."
    ),
    url="https://arxiv.org/abs/2211.08512",
    summary="self-supervised blind-spot training (median replacement, max-blur pooling, no top skip connection)",
)
_STRUCTN2V = AlgorithmInfo(
    title="structN2V",
    tag="structn2v",
    cite_text=(
        "Broaddus, C., Krull, A., Weigert, M., Schmidt, U., Myers, G. Removing structured noise with "
        "self-supervised blind-spot networks. ISBI 2020."
    ),
    doi="10.1109/ISBI45749.2020.9098336",
    summary="self-supervised blind-spot training with a structured mask for spatially correlated noise",
)
_CARE = AlgorithmInfo(
    title="CARE",
    tag="care",
    cite_text=(
        "Weigert, M., Schmidt, U., Boothe, T. et al. Content-aware image restoration: pushing the limits of "
        "fluorescence microscopy. Nature Methods 15, 1090-1097 (2018)."
    ),
    doi="10.1038/s41592-018-0216-7",
    summary="supervised training on pairs of noisy and clean images",
)
_N2N = AlgorithmInfo(
    title="Noise2Noise",
    tag="noise2noise",
    cite_text=(
        "Lehtinen, J., Munkberg, J., Hasselgren, J., Laine, S., Karras, T., Aittala, M., Aila, T. "
        "Noise2Noise: Learning image restoration without clean data. ICML 2018."
    ),
    url="https://arxiv.org/abs/1803.04189",
    summary="training on pairs of independently noisy images of the same content",
)
ALGORITHMS: dict[str, AlgorithmInfo] = {"n2v": _N2V, "n2v2": _N2V2, "structn2v": _STRUCTN2V, "care": _CARE, "n2n": _N2N}


def algorithm_info(run: RunInfo) -> list[AlgorithmInfo]:
    """The algorithm(s) to credit: structN2V with the N2V2 network credits both."""
    name = run.spec.algorithm.name
    infos = [ALGORITHMS[name]]
    if name == "structn2v" and run.spec.uses_n2v2_network:
        infos.append(_N2V2)
    if name in ("n2v2", "structn2v"):
        infos.append(_N2V)
    return infos


_METRIC_LABELS = {
    "val_loss": "validation loss (normalised units)",
    "val_psnr": "validation PSNR (dB)",
    "best_epoch": "best epoch",
    "best epoch": "best epoch",
    "best val_loss": "validation loss (normalised units)",
    "best val_psnr": "validation PSNR (dB)",
}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def validation_metrics(run: RunInfo) -> dict[str, Any]:
    """Validation numbers from ``training_summary.json`` (keys starting with ``val``), else metrics.csv."""
    found: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str = "") -> None:
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and k in ("validation", "metrics", "val", "best"):
                walk(v, f"{key}.")
            elif (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and (k.startswith("val") or k.startswith("best") or prefix)
            ):
                if math.isfinite(float(v)):
                    found[key] = v

    walk(run.summary)
    if not found and run.metrics:
        rows = [r for r in run.metrics if r.get("val_loss") not in (None, "")]
        if rows:
            best = min(rows, key=lambda r: float(r["val_loss"]))
            for k in ("epoch", "val_loss", "val_psnr"):
                if best.get(k) not in (None, ""):
                    found[f"best {k}"] = float(best[k])
    return found


def _file_records(summary: dict[str, Any], records_key: str, files_key: str) -> list[dict[str, Any]]:
    """Per-file records (``name``, ``axes``, ``shape``, ``dtype``) of ``training_summary.json``.

    Runs record every resolved file under ``inputs`` / ``targets``; without those (older or
    hand-made run directories) the names under ``files`` / ``target_files`` are all there is.
    """
    records = summary.get(records_key)
    if isinstance(records, list) and records and all(isinstance(r, dict) for r in records):
        return [{**r, "name": str(r.get("name") or Path(str(r.get("path") or "?")).name)} for r in records]
    files = summary.get(files_key)
    out = []
    for f in files if isinstance(files, list) else []:
        if isinstance(f, dict):
            f = f.get("path") or f.get("file") or f.get("name")
        if f is not None:
            out.append({"name": Path(str(f)).name})
    return out


def _shape_text(shape: Any) -> str:
    if isinstance(shape, (list, tuple)) and all(isinstance(n, int) for n in shape):
        return " × ".join(str(n) for n in shape)
    return "" if shape is None else str(shape)


# More rows make the README a file listing; the run directory has them all.
_MAX_FILE_ROWS = 20


def _data_lines(run: RunInfo) -> list[str]:
    """Training-data summary from ``training_summary.json``: the files read (name, axes, shape), key numbers."""
    s = run.summary
    lines = []
    inputs = _file_records(s, "inputs", "files")
    targets = _file_records(s, "targets", "target_files")
    if inputs:
        lines.append(f"- Training images: {len(inputs)} file(s), listed below.")
    if targets:
        lines.append(f"- Target images: {len(targets)} file(s), paired with the inputs by order.")
    for key, label in (
        ("n_channels", "Channels"),
        ("validation", "Validation split"),
        ("data_loading", "Data loading"),
        ("epochs_run", "Epochs run"),
        ("early_stopped", "Stopped early"),
        ("steps", "Optimisation steps"),
        ("device", "Trained on"),
        ("seconds_this_session", "Training time (s)"),
    ):
        value = s.get(key)
        if value is not None and not isinstance(value, (dict, list)):
            lines.append(f"- {label}: {_fmt(value)}")
    if not lines:
        return ["- (the run directory recorded no training data summary)"]
    if inputs:
        paired = len(targets) == len(inputs)
        lines += [
            "",
            "| training image |" + (" target |" if paired else "") + " axes | shape | dtype |",
            "|---|" + ("---|" if paired else "") + "---|---|---|",
        ]
        for i, rec in enumerate(inputs[:_MAX_FILE_ROWS]):
            target = f" `{targets[i]['name']}` |" if paired else ""
            lines.append(
                f"| `{rec['name']}` |{target} {rec.get('axes') or ''} | {_shape_text(rec.get('shape'))} "
                f"| {rec.get('dtype') or ''} |"
            )
        if len(inputs) > _MAX_FILE_ROWS:
            lines.append(f"| ... and {len(inputs) - _MAX_FILE_ROWS} more |" + (" |" if paired else "") + " | | |")
    return lines


def _input_step(run: RunInfo) -> str:
    from ai4life_kit.data.normalization import input_eps

    if input_eps(run.std) > 0:
        return "`fixed_zero_mean_unit_variance`"
    return "`scale_linear` (gain 1/std, offset -mean/std: a std this small would drown in consumers' eps of 1e-6)"


def write_documentation(
    path: Path,
    run: RunInfo,
    *,
    name: str,
    description: str,
    test_source: str,
    weight_formats: list[str],
    synthetic_test: bool = False,
) -> Path:
    """Write the package README (model, training, ``## Validation``, usage, citation).

    ``synthetic_test`` says the test tensors are synthetic noise (``--synthetic-test-data``), which
    the README then states plainly: a reader must not take them, or the cover, for real data.
    """
    spec = run.spec
    algos = algorithm_info(run)
    algo = algos[0]
    dims = run.dims
    axes = "b, c, z, y, x" if dims == 3 else "b, c, y, x"
    n_params = sum(int(np.prod(t.shape)) for t in run.model_state.values() if hasattr(t, "shape"))
    metrics = validation_metrics(run)
    t = spec.training
    norm = ", ".join(
        f"channel {c}: mean {m:.4g}, std {s:.4g}" for c, (m, s) in enumerate(zip(run.mean, run.std, strict=True))
    )
    out_norm = ", ".join(
        f"channel {c}: gain {s:.4g}, offset {m:.4g}"
        for c, (m, s) in enumerate(zip(run.target_mean, run.target_std, strict=True))
    )
    lines = [
        f"# {name}",
        "",
        description,
        "",
        "## Model",
        "",
        f"- Algorithm: {algo.title}, {algo.summary}.",
        f"- Network: {dims}D U-Net, depth {run.depth}, width {run.model_args.get('width')}, "
        f"{'N2V2 variant (max-blur pooling, no top skip), ' if run.model_args.get('n2v2') else ''}"
        f"{n_params:,} parameters; architecture file `unet.py` (imports only torch).",
        f"- Input and output: one tensor each, axes `{axes}`, {run.in_channels} channel(s) in, "
        f"{run.out_channels} out; spatial sizes `{2 * run.halo + run.step} + n * {run.step}`; "
        f"output halo {run.halo} pixels (the receptive-field radius).",
        f"- Pre-processing: {_input_step(run)} with the training statistics ({norm}).",
        f"- Post-processing: `scale_linear` back to raw intensities ({out_norm}).",
        f"- Weight formats: {', '.join(f'`{w}`' for w in weight_formats)}.",
        "",
        "## Training",
        "",
        f"Trained with ai4life-kit using {algo.title}: "
        f"up to {t.epochs} epoch(s) of {t.steps_per_epoch} steps, batch size {t.batch_size}, "
        f"patch size {spec.data.patch_size}, learning rate {t.learning_rate:g} ({t.lr_schedule} schedule)"
        + (f", checkpoint of epoch {run.checkpoint_epoch}" if run.checkpoint_epoch is not None else "")
        + ". The full training spec is attached as `training_spec.yaml`.",
        "",
        *_data_lines(run),
        "",
        "## Validation",
        "",
    ]
    if metrics:
        lines += [
            "Metrics measured during training on the held-out validation split "
            f"({spec.data.val_fraction:.0%} of the data):",
            "",
            "| metric | value |",
            "|---|---|",
            *[f"| {_METRIC_LABELS.get(k, k)} | {_fmt(v)} |" for k, v in metrics.items()],
        ]
    else:
        lines.append("No validation metrics were recorded for this run.")
    lines += [
        "",
        f"The test input is a {test_source}; the test output is this model's prediction on it, which every "
        "weight format reproduces within bioimage.io's default tolerances (checked with `bioimageio test`).",
    ]
    if synthetic_test:
        lines += [
            "",
            "**The test and sample tensors are synthetic**: seeded random noise with the training mean and "
            "standard deviation, packaged with `--synthetic-test-data` instead of a crop of the training data. "
            "They show that every weight format computes the same output, not that the model denoises "
            "microscopy images, and the cover shows this noise, not real data.",
            "",
        ]
    lines += [
        "To validate the model on your own data, denoise held-out images and compare them with ground truth "
        "(e.g. PSNR / SSIM), or inspect residuals (input - output) for structure: they should look like noise.",
        "",
        "## Usage",
        "",
        "```",
        "ai4life-kit predict THIS_MODEL.bioimageio.zip noisy/*.tif --out denoised/",
        "bioimageio predict THIS_MODEL.bioimageio.zip --inputs noisy.tif",
        "```",
        "The package also runs in ilastik (TorchScript weights), deepImageJ and other bioimage.io consumers. "
        "Apply it to images acquired like the training data (same microscope, noise level and pixel size).",
        "",
        "## Limitations",
        "",
        "A denoiser trained on one kind of data can hallucinate or blur structures on data it has not seen; "
        + (
            "blind-spot training assumes pixel-wise independent noise"
            + (" apart from the structured mask" if spec.algorithm.name == "structn2v" else "")
            + "."
            if spec.is_self_supervised
            else "its quality is bounded by the quality of the training targets."
        ),
        "",
        "## References",
        "",
        *[f"- {a.cite_text}" + (f" doi:{a.doi}" if a.doi else f" {a.url}") for a in algos],
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# bioimage.io shows covers at 2:1 and asks for files under 500 kB.
COVER_MAX_BYTES = 500_000
_PERCENTILES = (1.0, 99.8)


def _plane(tensor: np.ndarray) -> np.ndarray:
    """``b, c, (z), y, x`` -> ``c, y, x``: the first batch item, the middle Z slice of a stack."""
    a = np.asarray(tensor, dtype=np.float32)[0]
    return a[:, a.shape[1] // 2] if a.ndim == 4 else a


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
    """
    import io

    planes = [_plane(test_input), _plane(test_output)]
    while True:
        buf = io.BytesIO()
        _render_cover(planes, labels, side).save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes or side <= 64:
            break
        side = max(64, int(side * 0.8))
    Path(path).write_bytes(buf.getvalue())
    return Path(path)
