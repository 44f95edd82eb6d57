"""``ai4life-kit evaluate``: score predictions against ground truth as the AI4Life challenge does.

The scoring is :func:`ai4life_kit.evaluation.evaluate_folders`; this module prints its table and
writes its JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["evaluate"]


def _table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    from ai4life_kit.evaluation import METRIC_COLUMNS

    multi = any(len(img["channels"]) > 1 for img in result["images"])
    table = Table(title=f"{result['n_images']} image(s): {result['prediction']} vs {result['ground_truth']}")
    table.add_column("image")
    if multi:
        table.add_column("channel")
    for _, title, _ in METRIC_COLUMNS:
        table.add_column(title, justify="right")

    def cells(values: dict[str, float]) -> list[str]:
        return [fmt.format(values[key]) for key, _, fmt in METRIC_COLUMNS]

    for img in result["images"]:
        channels = img["channels"]
        if multi and len(channels) > 1:
            for c, values in enumerate(channels):
                table.add_row(img["name"] if c == 0 else "", str(c), *cells(values))
            table.add_row("", "mean", *cells(img["mean"]), style="dim")
        else:
            table.add_row(img["name"], *([""] if multi else []), *cells(img["mean"]))
    table.add_section()
    if multi and result["mean_per_channel"]:
        for c, values in enumerate(result["mean_per_channel"]):
            table.add_row("mean", str(c), *cells(values))
    table.add_row("mean", *(["all"] if multi else []), *cells(result["mean"]), style="bold")
    return table


def _video_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    from ai4life_kit.evaluation import VIDEO_COLUMNS

    table = Table(title=f"{result['n_images']} video(s), stSNR alpha {result['alpha']:g}: {result['prediction']}")
    table.add_column("video")
    for _, title, _ in VIDEO_COLUMNS:
        table.add_column(title, justify="right")
    for img in [*result["images"], {"name": "mean", "mean": result["mean"]}]:
        table.add_row(img["name"], *[fmt.format(img["mean"][key]) for key, _, fmt in VIDEO_COLUMNS])
    return table


def _calibration_table(cal: dict[str, Any]) -> Any:
    from rich.table import Table

    laplace = cal["pooled"]["family"] == "laplace"
    what, sym = ("Laplace scales", "b") if laplace else ("ensemble spreads read as normal sigmas", "sigma")
    with_d = "disagreement_spearman" in cal["pooled"]
    with_cal = "coverage50_calibrated" in cal["pooled"]
    table = Table(title=f"Uncertainty: central intervals of the {what} (nominal 0.50 / 0.90)")
    titles = ["image", "coverage 50 %", "coverage 90 %", f"Spearman({sym}, |error|)", "mean |error| / predicted"]
    titles += ["calibrated 50 %", "calibrated 90 %"] if with_cal else []
    for title in titles + (["Spearman(D, |error|)"] if with_d else []):
        table.add_column(title, justify="left" if title == "image" else "right")

    def cells(c: dict[str, Any]) -> list[str]:
        row = [f"{c['coverage50']:.3f}", f"{c['coverage90']:.3f}", f"{c['spearman']:.3f}"]
        row.append(f"{c['error_over_scale']:.2f}")
        if with_cal:
            row += [f"{c['coverage50_calibrated']:.3f}", f"{c['coverage90_calibrated']:.3f}"]
        return row + ([f"{c['disagreement_spearman']:.3f}"] if with_d else [])

    for img in cal["images"]:
        table.add_row(img["name"], *cells(img))
    table.add_section()
    table.add_row("all pixels", *cells(cal["pooled"]), style="bold")
    return table


def evaluate(
    pred_dir: Annotated[Path, typer.Argument(help="Folder of predicted TIFFs (a file or glob also works).")],
    gt: Annotated[Path, typer.Option("--gt", help="Folder of ground-truth TIFFs, matched to predictions by name.")],
    json_file: Annotated[
        Path | None, typer.Option("--json", metavar="FILE", help="Also write all scores to this JSON file.")
    ] = None,
    axes: Annotated[
        str | None,
        typer.Option("--axes", help="Axes of every image, overriding file metadata (e.g. YX, ZYX, SYX, CYX)."),
    ] = None,
    uncertainty: Annotated[
        bool,
        typer.Option(
            "--uncertainty",
            help="Also check the uncertainty maps `predict` wrote (PRED_DIR/uncertainty/NAME.tif, Laplace scales, "
            "or NAME.std.tif, an ensemble's spread): coverage of the 50 % and 90 % intervals, rank correlation "
            "of the map (and of an ensemble's disagreement D) with the error, and a reliability plot, "
            "PRED_DIR/uncertainty/reliability.png.",
        ),
    ] = False,
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            help="standard: PSNR, SI-PSNR, SSIM, MS-SSIM (MDC); stsnr: CIDC25's stSNR of (T, Y, X) videos (alpha x "
            "spatial SNR per frame + (1 - alpha) x temporal SNR per pixel trace, in dB) and PSNR with the 3rd-97th "
            "percentile range of the ground truth.",
        ),
    ] = "standard",
    alpha: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="--metric stsnr: weight of the spatial SNR (default 0.5; CIDC25's is not published)."
        ),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            metavar="RUN",
            help="With --uncertainty: also score the intervals calibrated with RUN/uncertainty_calibration.json "
            "(per-level factors fitted on the run's validation split at the end of training).",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --json file (and reliability plot).")
    ] = False,
) -> None:
    """Score predictions with PSNR, SI-PSNR, SSIM and MS-SSIM, as the AI4Life challenge does.

    PSNR and SSIM use the data range of each ground-truth image.

    S/T axes are scored image by image and averaged; channels (C) are scored separately.

    With --uncertainty, the calibration of a probabilistic model's or an ensemble's maps as well.
    """
    import json

    from rich.console import Console

    from ai4life_kit.errors import UserInputError
    from ai4life_kit.evaluation import evaluate_folders, json_safe, preview
    from ai4life_kit.fileio import atomic_write_text, check_writable

    metric = metric.strip().lower()
    if metric not in ("standard", "stsnr"):
        raise typer.BadParameter(f"{metric!r} is not one of standard, stsnr", param_hint="--metric")
    if alpha is not None and metric != "stsnr":
        raise UserInputError("--alpha weighs stSNR's parts: add --metric stsnr")
    if uncertainty and metric == "stsnr":
        raise UserInputError("--uncertainty checks images with the standard metrics; leave out --metric stsnr")
    plot = None
    factors = None
    if calibration is not None:
        from ai4life_kit.training.calibration import read_calibration

        if not uncertainty:
            raise UserInputError("--calibration scores uncertainty maps: add --uncertainty")
        factors = read_calibration(calibration)
        if factors is None:
            raise UserInputError(f"{calibration} has no uncertainty_calibration.json (a probabilistic run has one)")
    if uncertainty:
        from ai4life_kit.evaluation import UNCERTAINTY_DIR

        plot = (pred_dir if pred_dir.is_dir() else pred_dir.parent) / UNCERTAINTY_DIR / "reliability.png"
        check_writable(plot, overwrite)
    if json_file is not None:
        check_writable(json_file, overwrite)  # fail before the (possibly long) scoring
    result = evaluate_folders(pred_dir, gt, axes, metric, alpha)
    Console().print(_video_table(result) if metric == "stsnr" else _table(result))
    if plot is not None:
        from ai4life_kit.evaluation import evaluate_uncertainty
        from ai4life_kit.panels import write_reliability_plot

        result["uncertainty"] = evaluate_uncertainty(result, axes, factors)
        Console().print(_calibration_table(result["uncertainty"]))
        write_reliability_plot(
            plot, {"all pixels": result["uncertainty"]["pooled"]["reliability"]}, f"{pred_dir}", overwrite
        )
        result["uncertainty"]["reliability_plot"] = str(plot)
        Console().print(f"Reliability plot written to {plot}")
    if result["unmatched_ground_truth"]:
        Console(stderr=True).print(
            f"[yellow]Note:[/] {len(result['unmatched_ground_truth'])} ground-truth image(s) without a "
            f"prediction were ignored: {preview(result['unmatched_ground_truth'])}"
        )
    if json_file is not None:
        atomic_write_text(json_file, json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n", overwrite)
        Console().print(f"Scores written to {json_file}")
