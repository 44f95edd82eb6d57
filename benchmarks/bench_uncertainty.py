"""Probabilistic CARE on real images: its accuracy against MAE CARE, and how honest its uncertainty is.

Run from the repository root:

    .venv/bin/python benchmarks/bench_uncertainty.py [--steps-2d 400] [--steps-3d 150] [--seeds 3]

Per dataset (stardist's nuclei, 512 x 512, and the cells3d nucleus volume, 60 x 60 x 48, made noisy
with Poisson peak 20 photons + Gaussian read sigma 2; see ``_realdata.py``) and seed, it trains the
shipped ``care-<d>d.yaml`` (MAE) and ``care-<d>d-probabilistic.yaml`` (Laplace NLL) recipes on
the top three quarters of the image (noisy -> clean, same sizes, steps and seed for both), predicts
the whole image and scores the held-out bottom quarter against the clean image:

- PSNR of the MAE model and of the probabilistic model's means (ground-truth data range);
- coverage: the share of true pixels inside the predicted central 50 % and 90 % intervals
  (``mean +- b ln(1/(1-p))``; nominal 0.50 and 0.90);
- Spearman's rank correlation between the predicted scale ``b`` and the absolute error;
- mean |error| / mean ``b`` (1 for a calibrated Laplace, whose E|error| is ``b``);
- a post-hoc scale factor ``s = mean(|error| / b)`` (the Laplace maximum-likelihood factor), fitted
  on the first half of the held-out rows and scored on the second half: coverage before and after;
- coverage with the per-level factors the run fitted on its own validation split at the end of
  training (``RUN/uncertainty_calibration.json``, :mod:`ai4life_kit.training.calibration`);
- a reliability table: pixels binned by predicted ``b`` (deciles), mean ``b`` against mean |error|.

Also writes, for the first seed, the uncertainty panel (input | mean | b | |error|) and a reliability
plot. Results: benchmarks/results/uncertainty.{json,md} and uncertainty_*.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from _realdata import load_image, poisson_gaussian  # noqa: E402

from ai4life_kit.config import parse_spec  # noqa: E402
from ai4life_kit.data.tiff_io import write_image  # noqa: E402
from ai4life_kit.laplace import LEVELS, calibration, coverage  # noqa: E402
from ai4life_kit.metrics import psnr  # noqa: E402
from ai4life_kit.panels import write_reliability_plot, write_uncertainty_panel  # noqa: E402
from ai4life_kit.prediction import Predictor  # noqa: E402
from ai4life_kit.training import train  # noqa: E402
from ai4life_kit.training.calibration import read_calibration  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DATASETS = {"stardist-p20": ("stardist-2d", 2), "nucleus3d-p20": ("cells3d-nucleus", 3)}
SEED = 42


def _data(name: str) -> tuple[np.ndarray, np.ndarray, str]:
    source, dims = DATASETS[name]
    clean = load_image(source)
    if dims == 3:
        clean = clean[:48, :60, :48]  # 48 x 60 x 48: multiples of 4 (whole-image prediction)
    gt, noisy = poisson_gaussian(clean, 20, 2, np.random.default_rng(0))
    return gt, noisy, "YX" if dims == 2 else "ZYX"


def _spec(dims: int, probabilistic: bool, steps: int, seed: int) -> Any:
    recipe = f"care-{dims}d-probabilistic.yaml" if probabilistic else f"care-{dims}d.yaml"
    spec = yaml.safe_load((REPO / "model_specs" / recipe).read_text())
    spec["data"]["patch_size"] = [64, 64] if dims == 2 else [16, 32, 32]
    spec["training"] |= {
        "epochs": max(1, steps // 25),
        "steps_per_epoch": 25,
        "batch_size": 16 if dims == 2 else 8,
        "val_patches": 64,
        "early_stopping_patience": None,
        "seed": seed,
    }
    return parse_spec(spec, "bench")


def _calibration(gt: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> dict[str, Any]:
    """:func:`ai4life_kit.laplace.calibration` on the held-out rows, and the post-hoc factor.

    The factor ``s = mean(|error| / b)`` (the Laplace maximum-likelihood rescaling) is fitted on the
    first half of the rows (Y is axis -2) and scored on the second half.
    """
    err = np.abs(gt - mean)
    half = gt.shape[-2] // 2
    fit, test = (Ellipsis, slice(None, half), slice(None)), (Ellipsis, slice(half, None), slice(None))
    factor = float(np.mean(err[fit] / scale[fit]))
    out = calibration(gt, mean, scale) | {"factor": factor}
    for level in LEVELS:
        key = f"coverage{round(level * 100)}"
        out[f"{key}_test_half"] = coverage(gt[test], mean[test], scale[test], level)
        out[f"{key}_test_half_scaled"] = coverage(gt[test], mean[test], factor * scale[test], level)
    return out


def run_one(name: str, steps: int, seed: int, work: Path, panel: bool) -> dict[str, Any]:
    gt, noisy, axes = _data(name)
    dims = len(axes)
    n_y = gt.shape[-2]
    cut = n_y - max(8, n_y // 4)
    for what, arr in (("noisy", noisy), ("gt", gt)):
        write_image(work / f"{name}-{what}.tif", arr[..., :cut, :], axes, overwrite=True)
    data, target = [work / f"{name}-noisy.tif"], [work / f"{name}-gt.tif"]
    test = (Ellipsis, slice(cut, None), slice(None))
    result: dict[str, Any] = {"dataset": name, "seed": seed, "steps": steps, "test_rows": [cut, n_y]}
    for probabilistic in (False, True):
        key = "laplace" if probabilistic else "mae"
        t0 = time.perf_counter()
        run = train(
            _spec(dims, probabilistic, steps, seed),
            data,
            target,
            work / f"run-{name}-{key}-{seed}",
            device="cpu",
            progress=False,
            overwrite=True,
        )
        train_s = time.perf_counter() - t0
        predictor = Predictor.from_run_dir(run, "cpu")
        if probabilistic:
            mean, scale = predictor.predict_with_scale(noisy, axes)
            result[key] = {"psnr": psnr(gt[test], mean[test]), "train_s": train_s}
            result[key] |= _calibration(gt[test], mean[test], scale[test])
            cal = read_calibration(run)  # per-level factors the run fitted on its own validation split
            factors = dict(zip(cal["levels"], cal["factors"], strict=True))
            for level in LEVELS:
                key_p = f"coverage{round(level * 100)}_run_calibrated"
                result[key][key_p] = coverage(gt[test], mean[test], factors[level] * scale[test], level)
            result[key]["run_factors"] = cal["factors"]
            if panel:
                write_uncertainty_panel(
                    RESULTS / f"uncertainty_panel_{name}.png", noisy, mean, scale, axes, truth=gt, overwrite=True
                )
        else:
            result[key] = {"psnr": psnr(gt[test], predictor.predict(noisy, axes)[test]), "train_s": train_s}
        print(f"  {name} seed {seed} {key}: PSNR {result[key]['psnr']:.2f} dB ({train_s:.0f} s)", flush=True)
    result["noisy_psnr"] = psnr(gt[test], noisy[test])
    return result


def _pm(values: list[float], fmt: str = ".2f") -> str:
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.fmean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Probabilistic CARE: accuracy and calibration (`bench_uncertainty.py`)",
        "",
        f"Measured {report['date']} on {report['machine']}, CPU only, torch {report['torch']}. "
        f"Seeds {report['seeds']}; 2D {report['steps'][2]} steps, 3D {report['steps'][3]} steps (25 per epoch), "
        "the shipped CARE recipes with the benchmark's patch and batch sizes; mean ± sd over the seeds.",
        "",
        "| dataset | noisy PSNR | CARE MAE PSNR | probabilistic CARE PSNR | difference | coverage 50 % | "
        "coverage 90 % | after factor (fit / test halves): 50 % / 90 % | factor | run-calibrated 50 % / 90 % | "
        "Spearman(b, abs error) | mean abs error / mean b |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in report["results"]:
        by.setdefault(r["dataset"], []).append(r)
    for name, rs in by.items():
        lap = [r["laplace"] for r in rs]
        diff = [r["laplace"]["psnr"] - r["mae"]["psnr"] for r in rs]
        lines.append(
            f"| {name} | {_pm([r['noisy_psnr'] for r in rs])} | {_pm([r['mae']['psnr'] for r in rs])} | "
            f"{_pm([x['psnr'] for x in lap])} | {_pm(diff, '+.2f')} | {_pm([x['coverage50'] for x in lap], '.3f')} | "
            f"{_pm([x['coverage90'] for x in lap], '.3f')} | "
            f"{_pm([x['coverage50_test_half_scaled'] for x in lap], '.3f')} / "
            f"{_pm([x['coverage90_test_half_scaled'] for x in lap], '.3f')} | {_pm([x['factor'] for x in lap])} | "
            f"{_pm([x.get('coverage50_run_calibrated', float('nan')) for x in lap], '.3f')} / "
            f"{_pm([x.get('coverage90_run_calibrated', float('nan')) for x in lap], '.3f')} | "
            f"{_pm([x['spearman'] for x in lap], '.3f')} | {_pm([x['error_over_scale'] for x in lap])} |"
        )
    lines += ["", "Reliability (first seed): predicted b per decile against the observed mean |error|.", ""]
    for name, rs in by.items():
        rel = rs[0]["laplace"]["reliability"]
        lines.append(f"- {name}: " + ", ".join(f"{r['mean_b']:.3g} -> {r['mean_abs_error']:.3g}" for r in rel))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS, reverse=True))
    parser.add_argument("--steps-2d", type=int, default=400)
    parser.add_argument("--steps-3d", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    steps = {2: args.steps_2d, 3: args.steps_3d}
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "seeds": [SEED + k for k in range(args.seeds)],
        "steps": steps,
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-uncertainty-") as tmp:
        for name in args.datasets:
            for k in range(args.seeds):
                dims = DATASETS[name][1]
                report["results"].append(run_one(name, steps[dims], SEED + k, Path(tmp), panel=k == 0))
                (RESULTS / "uncertainty.json").write_text(json.dumps(report, indent=2))
    first = {}
    for r in report["results"]:
        first.setdefault(r["dataset"], r["laplace"]["reliability"])
    write_reliability_plot(RESULTS / "uncertainty_reliability.png", first, "held-out quarter, first seed", True)
    (RESULTS / "uncertainty.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
