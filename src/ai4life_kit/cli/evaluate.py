"""``ai4life-kit evaluate``: score predictions against ground truth as the AI4Life challenge does.

Files are matched by name (stem, so ``a.tif`` matches ``a.tiff``); every prediction needs a
ground truth, ground truths without a prediction are reported and ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["evaluate", "evaluate_folders"]

_COLUMNS = (("psnr", "PSNR", "{:.2f}"), ("si_psnr", "SI-PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"))
_COLUMNS += (("ms_ssim", "MS-SSIM", "{:.4f}"),)


def _by_stem(files: list[Path], what: str) -> dict[str, Path]:
    from ai4life_kit.errors import DataError

    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise DataError(f"two {what} files share the name {f.stem!r}: {out[f.stem]} and {f}")
        out[f.stem] = f
    return out


def _preview(names: list[str] | set[str], limit: int = 5) -> str:
    names = sorted(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _score_one(name: str, pred_path: Path, gt_path: Path, axes: str | None) -> dict[str, Any]:
    from ai4life_kit.data.tiff_io import read_image
    from ai4life_kit.errors import DataError
    from ai4life_kit.metrics import evaluate_image

    gt = read_image(gt_path, axes=axes)
    pred = read_image(pred_path, axes=axes)
    if pred.data.shape != gt.data.shape:
        raise DataError(
            f"{name}: prediction {pred_path} has shape {pred.data.shape}, "
            f"ground truth {gt_path} has shape {gt.data.shape}"
        )
    if pred.axes != gt.axes:
        raise DataError(f"{name}: prediction axes {pred.axes!r} differ from ground-truth axes {gt.axes!r}; pass --axes")
    try:
        scores = evaluate_image(gt.data, pred.data, gt.axes)
    except DataError as exc:
        raise DataError(f"{name}: {exc}") from None
    return {
        "name": name,
        "prediction": str(pred_path),
        "ground_truth": str(gt_path),
        "shape": list(gt.data.shape),
        "axes": gt.axes,
        **scores,
    }


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    import numpy as np

    return {key: float(np.mean([r[key] for r in rows])) for key, _, _ in _COLUMNS}


def evaluate_folders(pred: Path, gt: Path, axes: str | None = None) -> dict[str, Any]:
    """Score every prediction in ``pred`` against the same-named image in ``gt``.

    Parameters
    ----------
    pred, gt
        Folders (or single files / glob patterns) of TIFFs.
    axes
        Axes of every image, overriding file metadata (e.g. ``"SYX"``, ``"CYX"``).

    Returns
    -------
    dict
        ``images`` (per image: name, paths, shape, axes, per-channel and mean metrics),
        ``mean`` (over images), ``mean_per_channel`` (when all images have the same channel
        count, else ``None``) and ``unmatched_ground_truth``.

    Raises
    ------
    DataError
        Empty folders, no names in common, a prediction without ground truth, shape or axes
        mismatch, unreadable or non-finite images.
    """
    from ai4life_kit.data.tiff_io import resolve_inputs
    from ai4life_kit.errors import DataError

    pred_files = _by_stem(resolve_inputs([pred], what="prediction"), "prediction")
    gt_files = _by_stem(resolve_inputs([gt], what="ground-truth"), "ground-truth")
    common = sorted(set(pred_files) & set(gt_files))
    if not common:
        raise DataError(
            f"no file names in common between predictions in {pred} ({_preview(set(pred_files))}) "
            f"and ground truth in {gt} ({_preview(set(gt_files))})"
        )
    missing = set(pred_files) - set(gt_files)
    if missing:
        raise DataError(f"no ground truth in {gt} for prediction(s) {_preview(missing)}")

    images = [_score_one(name, pred_files[name], gt_files[name], axes) for name in common]
    n_channels = {len(img["channels"]) for img in images}
    per_channel = None
    if len(n_channels) == 1:
        per_channel = [_mean([img["channels"][c] for img in images]) for c in range(n_channels.pop())]
    return {
        "prediction": str(pred),
        "ground_truth": str(gt),
        "axes": axes,
        "n_images": len(images),
        "images": images,
        "mean": _mean([img["mean"] for img in images]),
        "mean_per_channel": per_channel,
        "unmatched_ground_truth": sorted(set(gt_files) - set(pred_files)),
    }


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats (PSNR of identical images is inf) by None: strict JSON."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    multi = any(len(img["channels"]) > 1 for img in result["images"])
    table = Table(title=f"{result['n_images']} image(s): {result['prediction']} vs {result['ground_truth']}")
    table.add_column("image")
    if multi:
        table.add_column("channel")
    for _, title, _ in _COLUMNS:
        table.add_column(title, justify="right")

    def cells(values: dict[str, float]) -> list[str]:
        return [fmt.format(values[key]) for key, _, fmt in _COLUMNS]

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

    from ai4life_kit.fileio import atomic_write_text, check_writable

    if json_file is not None:
        check_writable(json_file, overwrite)  # fail before the (possibly long) scoring
    result = evaluate_folders(pred_dir, gt, axes)
    Console().print(_table(result))
    if result["unmatched_ground_truth"]:
        Console(stderr=True).print(
            f"[yellow]Note:[/] {len(result['unmatched_ground_truth'])} ground-truth image(s) without a "
            f"prediction were ignored: {_preview(result['unmatched_ground_truth'])}"
        )
    if json_file is not None:
        atomic_write_text(json_file, json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n", overwrite)
        Console().print(f"Scores written to {json_file}")
