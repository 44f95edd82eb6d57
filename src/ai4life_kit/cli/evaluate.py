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
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --json file.")] = False,
) -> None:
    """Score predictions with PSNR, SI-PSNR, SSIM and MS-SSIM, as the AI4Life challenge does.

    PSNR and SSIM use the data range of each ground-truth image.

    S/T axes are scored image by image and averaged; channels (C) are scored separately.
    """
    import json

    from rich.console import Console

    from ai4life_kit.evaluation import evaluate_folders, json_safe, preview
    from ai4life_kit.fileio import atomic_write_text, check_writable

    if json_file is not None:
        check_writable(json_file, overwrite)  # fail before the (possibly long) scoring
    result = evaluate_folders(pred_dir, gt, axes)
    Console().print(_table(result))
    if result["unmatched_ground_truth"]:
        Console(stderr=True).print(
            f"[yellow]Note:[/] {len(result['unmatched_ground_truth'])} ground-truth image(s) without a "
            f"prediction were ignored: {preview(result['unmatched_ground_truth'])}"
        )
    if json_file is not None:
        atomic_write_text(json_file, json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n", overwrite)
        Console().print(f"Scores written to {json_file}")
