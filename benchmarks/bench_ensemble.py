"""Ensembles on a real image: what K members gain over one, and whether their spread points at the errors.

Run from the repository root:

    .venv/bin/python benchmarks/bench_ensemble.py [--members 5] [--steps 300]

Data: stardist's nuclei (512 x 512, ``_realdata.py``) made noisy with Poisson peak 20 photons +
Gaussian read sigma 2, as ``bench_uncertainty.py`` makes them. Per recipe (probabilistic CARE,
noisy -> clean; N2V2, noisy only) it trains ``--members`` members with ``train_ensemble`` (seeds
42, 43, ...) on the top three quarters of the image, predicts the whole image with the ensemble
(:class:`ai4life_kit.prediction.EnsemblePredictor`) and scores the held-out bottom quarter
against the clean image:

- PSNR of every member alone, of the ensemble mean, and the gain of the mean over the average
  member and over the best one;
- the ensemble's uncertainty maps (:func:`ai4life_kit.laplace.calibration`): for probabilistic
  members the ensemble's Laplace scale (coverage of the 50 % / 90 % intervals, Spearman against the
  absolute error) and Spearman of the disagreement D; for N2V2 the members' std read as a normal
  sigma;
- training and prediction time.

Also writes the panel (input | mean | map | |error|) of each recipe. Results:
benchmarks/results/ensemble.{json,md} and ensemble_panel_*.png.
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

from bench_uncertainty import _data  # noqa: E402

from ai4life_kit.config import parse_spec  # noqa: E402
from ai4life_kit.data.tiff_io import write_image  # noqa: E402
from ai4life_kit.laplace import calibration  # noqa: E402
from ai4life_kit.metrics import psnr  # noqa: E402
from ai4life_kit.panels import write_uncertainty_panel  # noqa: E402
from ai4life_kit.prediction import EnsemblePredictor  # noqa: E402
from ai4life_kit.training.ensemble import train_ensemble  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DATASET = "stardist-p20"
RECIPES = {"care-2d-probabilistic": True, "n2v2-2d": False}  # recipe -> trains on pairs


def _spec(recipe: str, steps: int) -> Any:
    spec = yaml.safe_load((REPO / "model_specs" / f"{recipe}.yaml").read_text())
    spec["data"]["patch_size"] = [64, 64]
    spec["training"] |= {
        "epochs": max(1, steps // 25),
        "steps_per_epoch": 25,
        "batch_size": 16,
        "val_patches": 64,
        "early_stopping_patience": None,
        "seed": 42,
    }
    return parse_spec(spec, "bench")


def run_recipe(recipe: str, members: int, steps: int, work: Path) -> dict[str, Any]:
    gt, noisy, axes = _data(DATASET)
    cut = gt.shape[-2] - max(8, gt.shape[-2] // 4)
    write_image(work / "noisy.tif", noisy[:cut], axes, overwrite=True)
    write_image(work / "gt.tif", gt[:cut], axes, overwrite=True)
    paired = RECIPES[recipe]
    t0 = time.perf_counter()
    out = train_ensemble(
        _spec(recipe, steps),
        [work / "noisy.tif"],
        [work / "gt.tif"] if paired else None,
        work / f"ens-{recipe}",
        members,
        device="cpu",
        progress=False,
        overwrite=True,
    )
    train_s = time.perf_counter() - t0
    ens = EnsemblePredictor.from_dir(out, "cpu")
    t0 = time.perf_counter()
    singles, scales = ens.member_predictions(noisy, axes)  # once: the members alone and their ensemble
    mean, maps = ens.combine(singles, scales)
    predict_s = time.perf_counter() - t0
    test = (slice(cut, None), slice(None))
    member_psnr = [psnr(gt[test], m[test]) for m in singles]
    result: dict[str, Any] = {
        "recipe": recipe,
        "members": members,
        "steps": steps,
        "noisy_psnr": psnr(gt[test], noisy[test]),
        "member_psnr": member_psnr,
        "ensemble_psnr": psnr(gt[test], mean[test]),
        "train_s": train_s,
        "predict_s": predict_s,
    }
    result["gain_over_mean_member"] = result["ensemble_psnr"] - statistics.fmean(member_psnr)
    result["gain_over_best_member"] = result["ensemble_psnr"] - max(member_psnr)
    kind = "scale" if ens.probabilistic else "std"
    family = "laplace" if ens.probabilistic else "normal"
    cal = calibration(gt[test], mean[test], maps[kind][test], family=family)
    result["calibration"] = cal
    if "disagreement" in maps:
        from scipy.stats import spearmanr

        err = np.abs(gt[test] - mean[test]).ravel()
        result["disagreement_spearman"] = float(spearmanr(maps["disagreement"][test].ravel(), err).statistic)
        result["disagreement_median_bits"] = float(np.median(maps["disagreement"][test]))
    label = "ensemble Laplace scale b" if ens.probabilistic else "members' std"
    write_uncertainty_panel(
        RESULTS / f"ensemble_panel_{recipe}.png", noisy, mean, maps[kind], axes, gt, label, overwrite=True
    )
    print(
        f"  {recipe}: members {', '.join(f'{p:.2f}' for p in member_psnr)} dB -> ensemble "
        f"{result['ensemble_psnr']:.2f} dB ({result['gain_over_mean_member']:+.2f}); cov50 {cal['coverage50']:.3f} "
        f"cov90 {cal['coverage90']:.3f} spearman {cal['spearman']:.3f} "
        f"({train_s:.0f} s train, {predict_s:.1f} s predict)",
        flush=True,
    )
    return result


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Ensembles: gain over one member, and their spread (`bench_ensemble.py`)",
        "",
        f"Measured {report['date']} on {report['machine']}, CPU only, torch {report['torch']}. {DATASET}: "
        f"top three quarters for training, bottom quarter scored. {report['members']} members (seeds 42..), "
        f"{report['steps']} steps each (25 per epoch, batch 16, 64 x 64 patches).",
        "",
        "| recipe | noisy PSNR | members' PSNR (mean ± sd; best) | ensemble PSNR | gain over mean member | "
        "gain over best | map | coverage 50 % | coverage 90 % | Spearman(map, abs error) | "
        "Spearman(D, abs error) | mean abs error / predicted | train s | predict s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        cal, mp = r["calibration"], r["member_psnr"]
        d = f"{r['disagreement_spearman']:.3f}" if "disagreement_spearman" in r else "-"
        lines.append(
            f"| {r['recipe']} | {r['noisy_psnr']:.2f} | {statistics.fmean(mp):.2f} ± {statistics.stdev(mp):.2f}; "
            f"{max(mp):.2f} | {r['ensemble_psnr']:.2f} | {r['gain_over_mean_member']:+.2f} | "
            f"{r['gain_over_best_member']:+.2f} | {'Laplace b' if cal['family'] == 'laplace' else 'std'} | "
            f"{cal['coverage50']:.3f} | {cal['coverage90']:.3f} | {cal['spearman']:.3f} | {d} | "
            f"{cal['error_over_scale']:.2f} | {r['train_s']:.0f} | {r['predict_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    args = parser.parse_args()
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "members": args.members,
        "steps": args.steps,
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-ensemble-") as tmp:
        for recipe in args.recipes:
            report["results"].append(run_recipe(recipe, args.members, args.steps, Path(tmp)))
            (RESULTS / "ensemble.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "ensemble.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
