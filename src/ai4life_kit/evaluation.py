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

__all__ = [
    "METRIC_COLUMNS",
    "VIDEO_COLUMNS",
    "UNCERTAINTY_DIR",
    "UNCERTAINTY_MAPS",
    "evaluate_folders",
    "evaluate_uncertainty",
    "json_safe",
    "preview",
    "uncertainty_map_path",
]

# Where `predict --uncertainty` puts the scale maps, inside its output folder.
UNCERTAINTY_DIR = "uncertainty"

UNCERTAINTY_MAPS = {
    "scale": ("", "laplace", "Laplace scale b"),
    "std": (".std", "normal", "members' std"),
    "disagreement": (".disagreement", None, "disagreement D (bits)"),
}
"""The maps `predict` writes next to an output ``OUT/NAME.tif``, as ``OUT/uncertainty/NAME<suffix>.tif``:
kind -> (file-name suffix, the distribution calibration reads it as, label). ``scale``: a
probabilistic model's Laplace scale (or an ensemble's, :func:`ai4life_kit.laplace.ensemble_scale`);
``std``: a deterministic ensemble's spread; ``disagreement``: a probabilistic ensemble's ``D``."""


def uncertainty_map_path(prediction: Path, kind: str) -> Path:
    """Where the ``kind`` map (:data:`UNCERTAINTY_MAPS`) of the output ``prediction`` lives."""
    prediction = Path(prediction)
    suffix = UNCERTAINTY_MAPS[kind][0]
    name = f"{prediction.stem}{suffix}.tif" if suffix else prediction.name
    return prediction.parent / UNCERTAINTY_DIR / name


METRIC_COLUMNS = (("psnr", "PSNR", "{:.2f}"), ("si_psnr", "SI-PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"))
METRIC_COLUMNS += (("ms_ssim", "MS-SSIM", "{:.4f}"),)
VIDEO_COLUMNS = (
    ("stsnr", "stSNR (dB)", "{:.2f}"),
    ("spatial_snr", "spatial SNR", "{:.2f}"),
    ("temporal_snr", "temporal SNR", "{:.2f}"),
    ("psnr_p3_p97", "PSNR (p3-p97 range)", "{:.2f}"),
)
"""``--metric stsnr``: CIDC25's ranking metric and its extra PSNR (:mod:`ai4life_kit.metrics_temporal`)."""


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


def _read_pair(name: str, pred_path: Path, gt_path: Path, axes: str | None):
    """Prediction and ground truth, read and checked to have the same shape and axes."""
    gt = read_image(gt_path, axes=axes)
    pred = read_image(pred_path, axes=axes)
    if pred.data.shape != gt.data.shape:
        raise DataError(
            f"{name}: prediction {pred_path} has shape {pred.data.shape}, "
            f"ground truth {gt_path} has shape {gt.data.shape}"
        )
    if pred.axes != gt.axes:
        raise DataError(f"{name}: prediction axes {pred.axes!r} differ from ground-truth axes {gt.axes!r}; pass --axes")
    return pred, gt


def _row(name: str, pred_path: Path, gt_path: Path, gt: Any) -> dict[str, Any]:
    return {
        "name": name,
        "prediction": str(pred_path),
        "ground_truth": str(gt_path),
        "shape": list(gt.data.shape),
        "axes": gt.axes,
    }


def _score_one(name: str, pred_path: Path, gt_path: Path, axes: str | None) -> dict[str, Any]:
    pred, gt = _read_pair(name, pred_path, gt_path, axes)
    try:
        scores = evaluate_image(gt.data, pred.data, gt.axes)
    except DataError as exc:
        raise DataError(f"{name}: {exc}") from None
    return {**_row(name, pred_path, gt_path, gt), **scores}


def _score_video(name: str, pred_path: Path, gt_path: Path, axes: str | None, alpha: float) -> dict[str, Any]:
    """CIDC25's metrics of one (T, Y, X) video (:func:`ai4life_kit.metrics_temporal.evaluate_video`)."""
    from ai4life_kit.metrics_temporal import evaluate_video

    pred, gt = _read_pair(name, pred_path, gt_path, axes)
    try:
        scores = evaluate_video(gt.data, pred.data, alpha)
    except DataError as exc:
        raise DataError(f"{name}: {exc} (stSNR scores (T, Y, X) videos; pass --axes TYX)") from None
    return {**_row(name, pred_path, gt_path, gt), "mean": scores}


def _mean(rows: list[dict[str, float]], columns: tuple = METRIC_COLUMNS) -> dict[str, float]:
    return {key: float(np.mean([r[key] for r in rows])) for key, _, _ in columns}


def evaluate_folders(
    pred: Path, gt: Path, axes: str | None = None, metric: str = "standard", alpha: float | None = None
) -> dict[str, Any]:
    """Score every prediction in ``pred`` against the same-named image in ``gt``.

    Parameters
    ----------
    pred, gt
        Folders (or single files / glob patterns) of TIFFs.
    axes
        Axes of every image, overriding file metadata (e.g. ``"SYX"``, ``"CYX"``).
    metric
        ``standard`` (the MDC metrics, :data:`METRIC_COLUMNS`) or ``stsnr`` (CIDC25's, of
        ``(T, Y, X)`` videos, :data:`VIDEO_COLUMNS`; ``alpha`` weighs its spatial part, default
        :data:`~ai4life_kit.metrics_temporal.DEFAULT_ALPHA`).

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

    if metric == "stsnr":
        from ai4life_kit.metrics_temporal import DEFAULT_ALPHA

        a = DEFAULT_ALPHA if alpha is None else alpha
        videos = [_score_video(name, pred_files[name], gt_files[name], axes, a) for name in common]
        return {
            "prediction": str(pred),
            "ground_truth": str(gt),
            "axes": axes,
            "metric": "stsnr",
            "alpha": a,
            "n_images": len(videos),
            "images": videos,
            "mean": _mean([v["mean"] for v in videos], VIDEO_COLUMNS),
            "unmatched_ground_truth": sorted(set(gt_files) - set(pred_files)),
        }
    if metric != "standard":
        raise ValueError(f"metric {metric!r}: standard or stsnr")
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


def _read_map(name: str, path: Path, shape: tuple[int, ...], axes: str | None, positive: bool) -> np.ndarray:
    data = read_image(path, axes=axes).data
    if data.shape != shape:
        raise DataError(f"{name}: uncertainty map {path} has shape {data.shape}, the prediction {shape}")
    if not (np.isfinite(data).all() and ((data > 0).all() if positive else (data >= 0).all())):
        bad = "non-positive" if positive else "negative"
        raise DataError(f"{name}: uncertainty map {path} has {bad} or non-finite values")
    return data


def _calibrated(
    truth: np.ndarray, mean: np.ndarray, scale: np.ndarray, factors: dict[float, float]
) -> dict[str, float]:
    """Coverage of the intervals ``mean +- s_p b ln(1/(1-p))`` for the reported levels a calibration has."""
    from ai4life_kit.laplace import LEVELS, coverage

    return {
        f"coverage{round(p * 100)}_calibrated": coverage(truth, mean, factors[p] * scale, p)
        for p in LEVELS
        if p in factors
    }


def evaluate_uncertainty(
    result: dict[str, Any], axes: str | None = None, calibration: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Calibration of the uncertainty maps next to the predictions scored in ``result`` (of :func:`evaluate_folders`).

    Each prediction ``OUT/NAME.tif`` has a Laplace scale map ``OUT/uncertainty/NAME.tif`` (a
    probabilistic model, or an ensemble of them) or a standard-deviation map
    ``OUT/uncertainty/NAME.std.tif`` (a deterministic ensemble), as ``predict`` writes them
    (:data:`UNCERTAINTY_MAPS`). Per image and pooled over all pixels of all images:
    :func:`ai4life_kit.laplace.calibration`; where a disagreement map ``NAME.disagreement.tif`` is
    there too, its rank correlation with the error (``disagreement_spearman``). With a run's
    ``calibration`` (``uncertainty_calibration.json``: levels and factors), also the coverage of
    the calibrated Laplace intervals (``coverage50_calibrated``, ...).

    Raises
    ------
    DataError
        A map is missing, has another shape or holds invalid values; images with maps of different kinds.
    """
    from scipy.stats import spearmanr

    from ai4life_kit.laplace import calibration as laplace_calibration

    factors = dict(zip(calibration["levels"], calibration["factors"], strict=True)) if calibration else {}
    pooled: dict[str, list[np.ndarray]] = {"truth": [], "mean": [], "scale": [], "disagreement": []}
    images, families = [], set()
    for img in result["images"]:
        pred_path = Path(img["prediction"])
        mean = read_image(pred_path, axes=axes).data
        kind = next((k for k in ("scale", "std") if uncertainty_map_path(pred_path, k).is_file()), None)
        if kind is None:
            raise DataError(
                f"{img['name']}: no uncertainty map {uncertainty_map_path(pred_path, 'scale')} (predict with "
                "--uncertainty, or with an ensemble)"
            )
        family = UNCERTAINTY_MAPS[kind][1]
        families.add(family)
        path = uncertainty_map_path(pred_path, kind)
        scale = _read_map(img["name"], path, mean.shape, axes, positive=family == "laplace")
        truth = read_image(Path(img["ground_truth"]), axes=axes).data
        row = {"name": img["name"], "map": kind, "scale_map": str(path)}
        row |= laplace_calibration(truth, mean, scale, family=family)
        if factors:
            if family != "laplace":
                raise DataError(f"{img['name']}: a calibration applies to Laplace scales, not to an ensemble's spread")
            row |= _calibrated(truth, mean, scale, factors)
        d_path = uncertainty_map_path(pred_path, "disagreement")
        if d_path.is_file():
            d = _read_map(img["name"], d_path, mean.shape, axes, positive=False)
            row["disagreement_spearman"] = float(spearmanr(d.ravel(), np.abs(truth - mean).ravel()).statistic)
            pooled["disagreement"].append(d.ravel())
        images.append(row)
        for key, arr in (("truth", truth), ("mean", mean), ("scale", scale)):
            pooled[key].append(arr.ravel())
    if len(families) > 1:
        raise DataError("the predictions carry uncertainty maps of different kinds (Laplace scales and spreads)")
    truth, mean, scale = (np.concatenate(pooled[k]) for k in ("truth", "mean", "scale"))
    summary = laplace_calibration(truth, mean, scale, family=families.pop())
    if factors:
        summary |= _calibrated(truth, mean, scale, factors)
    if len(pooled["disagreement"]) == len(images):
        d = np.concatenate(pooled["disagreement"])
        summary["disagreement_spearman"] = float(spearmanr(d, np.abs(truth - mean)).statistic)
    return {"images": images, "pooled": summary}


def json_safe(obj: Any) -> Any:
    """Replace non-finite floats (PSNR of identical images is inf) by None: strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj
