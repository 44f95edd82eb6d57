"""The README.md of a package (with a ``## Validation`` section) and how each algorithm is credited.

The cover image is :mod:`ai4life_kit.export.cover`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.export.rundir import RunInfo

__all__ = [
    "ALGORITHMS",
    "AlgorithmInfo",
    "algorithm_info",
    "write_documentation",
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


def _model_section(run: RunInfo, algo: AlgorithmInfo, weight_formats: list[str]) -> list[str]:
    """``## Model``: algorithm, network, tensors, processing with the training statistics, weight formats."""
    dims = run.dims
    axes = "b, c, z, y, x" if run.package_dims == 3 else "b, c, y, x"
    sizes = "; ".join(
        f"{a.id} `{a.min} + n * {a.step}`" + (f" (output {a.factor}x)" if a.factor > 1 else "") + f", halo {a.halo}"
        for a in run.package_axes
    )
    n_params = sum(int(np.prod(t.shape)) for t in run.model_state.values() if hasattr(t, "shape"))
    norm = ", ".join(
        f"channel {c}: mean {m:.4g}, std {s:.4g}" for c, (m, s) in enumerate(zip(run.mean, run.std, strict=True))
    )
    out_norm = ", ".join(
        f"`{name}`: gain {s:.4g}, offset {m:.4g}"
        for name, m, s in zip(run.output_channel_names, run.output_offset, run.output_gain, strict=True)
    )
    return [
        "## Model",
        "",
        f"- Algorithm: {algo.title}, {algo.summary}.",
        f"- Network: {dims}D U-Net, depth {run.depth}, width {run.model_args.get('width')}, "
        f"{'N2V2 variant (max-blur pooling, no top skip), ' if run.model_args.get('n2v2') else ''}"
        f"{n_params:,} parameters; architecture file `unet.py` (imports only torch).",
        f"- Input and output: one tensor each, axes `{axes}`, {run.in_channels} channel(s) in, "
        f"{run.n_outputs} out; input sizes and output halos (output pixels, at least the receptive-field "
        f"radius {run.halo}): {sizes}.",
        f"- Pre-processing: {_input_step(run)} with the training statistics ({norm}).",
        f"- Post-processing: `scale_linear` back to raw intensities ({out_norm}).",
        f"- Weight formats: {', '.join(f'`{w}`' for w in weight_formats)}.",
        "",
        *(_uncertainty_lines(run) if run.probabilistic else []),
        *_task_lines(run),
    ]


def _task_lines(run: RunInfo) -> list[str]:
    """``### Restoration task``: what a super-resolution or deconvolution network does, and its training pairs."""
    task = run.spec.task
    if task.kind == "denoise":
        return []
    d = task.degradation
    if task.kind == "super_resolution":
        what = (
            f"Joint denoising and {task.factor}x super-resolution: the output is {task.factor} times larger in y and "
            f"x (its axes declare `scale` 1/{task.factor}). The network first interpolates its input bilinearly "
            f"(`upsample_factor` {task.factor} in `unet.py`), then restores what interpolation cannot; the output "
            f"halo is {run.output_halo} output pixels."
        )
    elif task.kind == "isotropic":
        f = task.factor
        what = (
            f"Isotropic reconstruction (CARE, Weigert et al. 2018) of volumes whose z step is {f} times their "
            f"lateral pixel size: the output has {f} times the input's z planes (its z axis declares `scale` "
            f"1/{f}). `IsotropicUNet` in `unet.py` interpolates the volume linearly along z (input plane k at "
            f"output plane {f}k), runs the 2D network on every XZ and every YZ slice and averages the two. Past "
            f"the last input plane the volume is held, so the last {f - 1} output planes lie beyond the "
            f"acquired volume: drop them for the {f}(Z - 1) + 1 planes `ai4life-kit predict` writes (the same "
            "values). Set the output's z pixel size to the input's over "
            f"{f}. Trained on the volume's own lateral slices, sampled every {f} rows"
            + (
                f" after an extra axial blur of sigma {d.psf_sigma:g} pixels"
                if d.psf_sigma
                else (f" after blurring with the axial profile {Path(d.psf).name}" if d.psf else "")
            )
            + ", then interpolated back."
        )
        z = run.package_axes[0]
        if run.z_seams:
            what += (
                f" Its training volume has {run.thinnest_volume} planes, too few for a z halo (it would make "
                "the smallest input larger than that volume), so z has none: run volumes whole along z; where "
                "a consumer cuts a volume into z blocks (ilastik beyond 64 planes), the blocks meet with seams."
            )
        else:
            what += (
                f" The z halo ({z.halo} output planes, {z.halo // f} input planes) lets z blocks meet without "
                f"seams; the smallest volume is {z.min} planes."
            )
        return ["### Restoration task", "", what, ""]
    else:
        what = "Deconvolution with denoising: the output keeps the input's size and restores the detail the PSF blurs."
    if task.semi_synthetic:
        noise = f"Poisson noise at {d.peak:g} photons (99.9th percentile)" if d.peak else "no added noise"
        if d.peak and d.read_noise:
            noise += f" and Gaussian read noise of {d.read_noise:g} photons"
        binning = f", {task.factor}x{task.factor} binning" if task.kind == "super_resolution" else ""
        blur = (
            f"blur with the PSF image {Path(d.psf).name}"
            if d.psf
            else f"Gaussian PSF blur of sigma {d.psf_sigma:g} pixels"
        )
        pairs = (
            "Trained on semi-synthetic pairs made from the clean training images (CARE, Weigert et al. 2018): "
            f"{blur}{binning}, {noise}. It works on acquisitions that "
            "match this model of the microscope; the test input is a training image as it is."
        )
    else:
        pairs = "Trained on real pairs (input images and their targets)."
    return ["### Restoration task", "", what, pairs, ""]


def _uncertainty_lines(run: RunInfo) -> list[str]:
    """``### Output channels``: what a probabilistic model's two kinds of channels mean, and what not to do."""
    c = run.out_channels
    means, scales = run.output_channel_names[:c], run.output_channel_names[c:]
    return [
        "### Output channels: mean and uncertainty",
        "",
        'This is a probabilistic model (Weigert et al., Nature Methods 2018, "Content-aware image '
        'restoration"): per pixel it predicts a Laplace distribution of the restored intensity, trained '
        "with the Laplace negative log-likelihood.",
        "",
        f"- {', '.join(f'`{n}`' for n in means)}: the distribution's location, the restored image "
        "(use this channel as the output).",
        f"- {', '.join(f'`{n}`' for n in scales)}: its scale `b`, in the same intensity units: the central "
        "`p` interval of a pixel is `mean +- b ln(1/(1-p))` (`+-0.69 b` holds 50 %, `+-2.3 b` 90 %). "
        "Large `b` marks pixels the network is unsure of: do not trust structure there.",
        "- Neither channel is fit for intensity-based quantification (e.g. counting fluorophores); the "
        "scale shows where the restoration may be wrong, not a measurement error of the sample.",
        *_calibration_lines(run),
        "",
    ]


def _calibration_lines(run: RunInfo) -> list[str]:
    """The per-level interval factors fitted on the run's validation split, when it has them."""
    from ai4life_kit.training.calibration import read_calibration

    cal = read_calibration(run.run_dir)
    if cal is None:
        return []
    rows = [
        f"| {round(p * 100)} % | {round(c * 100)} % | {s:.3f} |"
        for p, c, s in zip(cal["levels"], cal["coverage_uncalibrated"], cal["factors"], strict=True)
    ]
    return [
        "",
        f"Calibration on the held-out validation split ({cal['pixels']:,} pixels): the share of true pixels "
        "inside `mean +- b ln(1/(1-p))`, and the factor `s_p` that makes `mean +- s_p b ln(1/(1-p))` hold "
        "exactly `p` of them (use it for calibrated intervals):",
        "",
        "| interval p | held | factor s_p |",
        "|---|---|---|",
        *rows,
    ]


def _training_section(run: RunInfo, algo: AlgorithmInfo) -> list[str]:
    """``## Training``: the schedule of the spec and the training data (:func:`_data_lines`)."""
    spec = run.spec
    t = spec.training
    return [
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
    ]


def _validation_section(run: RunInfo, test_source: str, synthetic_test: bool) -> list[str]:
    """``## Validation``: the validation metrics, what the test tensors are, how to validate on own data."""
    metrics = validation_metrics(run)
    lines = ["## Validation", ""]
    if metrics:
        lines += [
            "Metrics measured during training on the held-out validation split "
            f"({run.spec.data.val_fraction:.0%} of the data):",
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
    ]
    return lines


def _usage_section(run: RunInfo) -> list[str]:
    """``## Usage`` (our CLI, bioimageio's, other consumers) and ``## Limitations``."""
    spec = run.spec
    return [
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
    ]


def _references_section(algos: list[AlgorithmInfo]) -> list[str]:
    """``## References``: one line per credited algorithm, with its DOI or URL."""
    return [
        "## References",
        "",
        *[f"- {a.cite_text}" + (f" doi:{a.doi}" if a.doi else f" {a.url}") for a in algos],
        "",
    ]


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
    algos = algorithm_info(run)
    lines = [
        f"# {name}",
        "",
        description,
        "",
        *_model_section(run, algos[0], weight_formats),
        *_training_section(run, algos[0]),
        *_validation_section(run, test_source, synthetic_test),
        *_usage_section(run),
        *_references_section(algos),
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
