"""Score predictions against ground truth as the AI4Life challenge does: folders matched by file name.

Files are matched by name (stem, so ``a.tif`` matches ``a.tiff``); every prediction needs a
ground truth, ground truths without a prediction are reported and ignored. The metrics are
:mod:`ai4life_kit.metrics`'; ``ai4life-kit evaluate`` prints and saves what this returns.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ai4life_kit.data.tiff_io import read_image, resolve_inputs
from ai4life_kit.errors import DataError
from ai4life_kit.metrics import evaluate_image

__all__ = ["METRIC_COLUMNS", "UNCERTAINTY_DIR", "evaluate_folders", "evaluate_uncertainty", "json_safe", "preview"]

# Where `predict --uncertainty` puts the scale maps, inside its output folder.
UNCERTAINTY_DIR = "uncertainty"

METRIC_COLUMNS = (("psnr", "PSNR", "{:.2f}"), ("si_psnr", "SI-PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"))
METRIC_COLUMNS += (("ms_ssim", "MS-SSIM", "{:.4f}"),)


def _by_stem(files: list[Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in files:
        if f.stem in out:
            raise DataError(f"two {what} files share the name {f.stem!r}: {out[f.stem]} and {f}")
        out[f.stem] = f
    return out


def preview(names: list[str] | set[str], limit: int = 5) -> str:
    names = sorted(names)
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _score_one(name: str, pred_path: Path, gt_path: Path, axes: str | None) -> dict[str, Any]:
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
    return {key: float(np.mean([r[key] for r in rows])) for key, _, _ in METRIC_COLUMNS}


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
    pred_files = _by_stem(resolve_inputs([pred], what="prediction"), "prediction")
    gt_files = _by_stem(resolve_inputs([gt], what="ground-truth"), "ground-truth")
    common = sorted(set(pred_files) & set(gt_files))
    if not common:
        raise DataError(
            f"no file names in common between predictions in {pred} ({preview(set(pred_files))}) "
            f"and ground truth in {gt} ({preview(set(gt_files))})"
        )
    missing = set(pred_files) - set(gt_files)
    if missing:
        raise DataError(f"no ground truth in {gt} for prediction(s) {preview(missing)}")

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


def evaluate_uncertainty(result: dict[str, Any], axes: str | None = None) -> dict[str, Any]:
    """Calibration of the scale maps next to the predictions scored in ``result`` (of :func:`evaluate_folders`).

    Each prediction ``OUT/NAME.tif`` has its Laplace scales in ``OUT/uncertainty/NAME.tif``, as
    ``predict --uncertainty`` writes them. Per image and pooled over all pixels of all images:
    :func:`ai4life_kit.laplace.calibration`.

    Raises
    ------
    DataError
        A scale map is missing, has another shape, or holds a non-positive or non-finite scale.
    """
    from ai4life_kit.laplace import calibration

    truths, means, scales, images = [], [], [], []
    for img in result["images"]:
        pred_path = Path(img["prediction"])
        scale_path = pred_path.parent / UNCERTAINTY_DIR / pred_path.name
        if not scale_path.is_file():
            raise DataError(f"{img['name']}: no scale map {scale_path} (predict with --uncertainty)")
        scale = read_image(scale_path, axes=axes).data
        mean = read_image(pred_path, axes=axes).data
        truth = read_image(Path(img["ground_truth"]), axes=axes).data
        if scale.shape != mean.shape:
            raise DataError(
                f"{img['name']}: scale map {scale_path} has shape {scale.shape}, the prediction {mean.shape}"
            )
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise DataError(f"{img['name']}: scale map {scale_path} has non-positive or non-finite values")
        images.append({"name": img["name"], "scale_map": str(scale_path), **calibration(truth, mean, scale)})
        truths.append(truth.ravel())
        means.append(mean.ravel())
        scales.append(scale.ravel())
    pooled = calibration(np.concatenate(truths), np.concatenate(means), np.concatenate(scales))
    return {"images": images, "pooled": pooled}


def json_safe(obj: Any) -> Any:
    """Replace non-finite floats (PSNR of identical images is inf) by None: strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj
