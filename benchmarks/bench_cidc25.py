"""The 2025 challenges' recipes side by side: CIDC25 videos (frame-wise vs space-time) and MDC25 pairs.

Run from the repository root:

    .venv/bin/python benchmarks/bench_cidc25.py [--steps 200] [--frames 100] [--size 128]

CIDC25: three simulated two-photon calcium videos (``ai4life_kit.simulate.calcium``, seeds 0-2,
``--frames`` x ``--size`` x ``--size``, int16, peak 20 photons, read noise 2); two train, the third
is scored against its clean video with CIDC25's metrics (``ai4life_kit.metrics_temporal``: stSNR
with alpha 0.5, its spatial and temporal parts, and PSNR with the 3rd-97th percentile range):

- the noisy input;
- ``model_specs/cidc25-n2v2-frames.yaml``: N2V2 frame by frame (T read as samples);
- ``model_specs/cidc25-n2v2-st.yaml``: N2V2 over space and time (T read as the third axis).

MDC25 (supervised pairs): stardist's nuclei (512 x 512, ``_realdata.py``), two independent
Poisson-Gaussian realisations (peak 20, read sigma 2) and the clean image; the top three quarters
train, the bottom quarter is scored (PSNR, SSIM): CARE (noisy -> clean, ``care-2d.yaml``) and
Noise2Noise (noisy -> noisy, ``n2n-2d.yaml``).

Every recipe trains ``--steps`` steps (25 per epoch, patience off, the recipe's own batch size
unless it exceeds the benchmark's), CPU only. Results: benchmarks/results/cidc25.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
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
from ai4life_kit.metrics import psnr, ssim  # noqa: E402
from ai4life_kit.metrics_temporal import evaluate_video  # noqa: E402
from ai4life_kit.prediction import Predictor  # noqa: E402
from ai4life_kit.simulate.calcium import simulate_calcium  # noqa: E402
from ai4life_kit.training import train  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
VIDEO_RECIPES = {"cidc25-n2v2-frames": "SYX", "cidc25-n2v2-st": "ZYX"}  # recipe -> how a video is read
PAIR_RECIPES = ("care-2d", "n2n-2d")


def _spec(recipe: str, steps: int, batch: int) -> Any:
    spec = yaml.safe_load((REPO / "model_specs" / f"{recipe}.yaml").read_text())
    spec["training"] |= {
        "epochs": max(1, steps // 25),
        "steps_per_epoch": 25,
        "batch_size": min(batch, spec["training"].get("batch_size", batch)),
        "val_patches": 32,
        "early_stopping_patience": None,
        "seed": 42,
    }
    return parse_spec(spec, "bench")


def run_videos(steps: int, frames: int, size: int, work: Path) -> list[dict[str, Any]]:
    videos = [simulate_calcium((frames, size, size), seed=s) for s in range(3)]
    for i, v in enumerate(videos[:2]):
        write_image(work / f"train-{i}.tif", v.noisy, "TYX", overwrite=True)
    test = videos[2]
    rows = [{"method": "noisy input", **evaluate_video(test.clean, test.noisy), "train_s": 0.0, "predict_s": 0.0}]
    for recipe, axes in VIDEO_RECIPES.items():
        t0 = time.perf_counter()
        dims = 3 if axes == "ZYX" else 2
        run = train(
            _spec(recipe, steps, 8 if dims == 3 else 16),
            [work / "train-0.tif", work / "train-1.tif"],
            None,
            work / f"run-{recipe}",
            device="cpu",
            progress=False,
            overwrite=True,
        )
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        den = Predictor.from_run_dir(run, "cpu").predict(test.noisy.astype(np.float32), axes)
        predict_s = time.perf_counter() - t0
        rows.append({"method": recipe, **evaluate_video(test.clean, den), "train_s": train_s, "predict_s": predict_s})
        print(
            f"  {recipe}: stSNR {rows[-1]['stsnr']:.2f} dB ({train_s:.0f} s train, {predict_s:.1f} s predict)",
            flush=True,
        )
    return rows


def run_pairs(steps: int, work: Path) -> list[dict[str, Any]]:
    clean = load_image("stardist-2d")
    gt, noisy = poisson_gaussian(clean, 20, 2, np.random.default_rng(0))
    _, noisy2 = poisson_gaussian(clean, 20, 2, np.random.default_rng(1))
    cut = gt.shape[0] - gt.shape[0] // 4
    for name, arr in (("noisy", noisy), ("noisy2", noisy2), ("gt", gt)):
        write_image(work / f"{name}.tif", arr[:cut], "YX", overwrite=True)
    test = slice(cut, None)
    rows = [{"method": "noisy input", "psnr": psnr(gt[test], noisy[test]), "ssim": ssim(gt[test], noisy[test])}]
    for recipe in PAIR_RECIPES:
        target = work / ("gt.tif" if recipe.startswith("care") else "noisy2.tif")
        t0 = time.perf_counter()
        run = train(
            _spec(recipe, steps, 16), [work / "noisy.tif"], [target], work / f"run-{recipe}", device="cpu",
            progress=False, overwrite=True,
        )  # fmt: skip
        train_s = time.perf_counter() - t0
        den = Predictor.from_run_dir(run, "cpu").predict(noisy, "YX")
        rows.append(
            {"method": recipe, "psnr": psnr(gt[test], den[test]), "ssim": ssim(gt[test], den[test]), "train_s": train_s}
        )
        print(f"  {recipe}: PSNR {rows[-1]['psnr']:.2f} dB ({train_s:.0f} s train)", flush=True)
    return rows


def markdown(report: dict[str, Any]) -> str:
    f, s = report["frames"], report["size"]
    lines = [
        "# The 2025 challenges' recipes (`bench_cidc25.py`)",
        "",
        f"Measured {report['date']} on {report['machine']}, CPU only, torch {report['torch']}; "
        f"{report['steps']} training steps per recipe.",
        "",
        f"CIDC25-like: simulated two-photon videos {f} x {s} x {s} (2 for training, 1 scored), stSNR alpha 0.5.",
        "",
        "| method | stSNR (dB) | spatial SNR | temporal SNR | PSNR (p3-p97) | train s | predict s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["videos"]:
        lines.append(
            f"| {r['method']} | {r['stsnr']:.2f} | {r['spatial_snr']:.2f} | {r['temporal_snr']:.2f} | "
            f"{r['psnr_p3_p97']:.2f} | {r['train_s']:.0f} | {r['predict_s']:.1f} |"
        )
    lines += [
        "",
        "MDC25-like: stardist nuclei, peak 20 photons, pairs; bottom quarter scored.",
        "",
        "| method | PSNR (dB) | SSIM | train s |",
        "|---|---|---|---|",
    ]
    for r in report["pairs"]:
        lines.append(f"| {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r.get('train_s', 0.0):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--skip-pairs", action="store_true")
    args = parser.parse_args()
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "steps": args.steps,
        "frames": args.frames,
        "size": args.size,
    }
    with tempfile.TemporaryDirectory(prefix="bench-cidc25-") as tmp:
        report["videos"] = run_videos(args.steps, args.frames, args.size, Path(tmp))
        (RESULTS / "cidc25.json").write_text(json.dumps(report, indent=2))
        report["pairs"] = [] if args.skip_pairs else run_pairs(args.steps, Path(tmp))
    (RESULTS / "cidc25.json").write_text(json.dumps(report, indent=2))
    (RESULTS / "cidc25.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
