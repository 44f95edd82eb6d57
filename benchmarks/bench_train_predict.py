"""Training and prediction speed, peak memory and accuracy on a 1024x1024 simulated image.

Run from the repository root (any machine; the numbers in the README came from this script):

    python benchmarks/bench_train_predict.py [--steps 100] [--precision fp32 bf16] [--device cpu]

Each measurement runs in its own subprocess, so its peak RSS is its own. Setup as in the
issue: N2V2, U-Net depth 2 / width 32 (CAREamics' default size), 64x64 patches, batch 64.
Results go to benchmarks/results/train_predict.{json,md}. The CAREamics reference numbers
below were measured on the same 2-core machine kind (issue 2); issue 5's benchmark runs
CAREamics side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
REFERENCE = {  # CAREamics 0.3.5, default U-Net (depth 2, 32 filters), 2 CPU cores (issue 2)
    "train_patches_per_s": 55.0,
    "predict_mpix_per_s_tiled": 0.24,
    "forward_mpix_per_s": 0.41,
    "peak_rss_gib": 3.3,
    "import_s": 6.5,
}
SPEC = {
    "name": "bench-n2v2",
    "algorithm": {"name": "n2v2"},
    "model": {"depth": 2, "width": 32},
    "data": {"dims": 2, "patch_size": [64, 64], "val_fraction": 0.1},
    "training": {"batch_size": 64, "val_patches": 64, "early_stopping_patience": None},
}


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def phase_train(workdir: Path, steps: int, precision: str, device: str) -> dict:
    from ai4life_kit.config import parse_spec
    from ai4life_kit.data.tiff_io import read_image
    from ai4life_kit.metrics import psnr
    from ai4life_kit.prediction import Predictor
    from ai4life_kit.training import train

    sim = workdir / "sim"
    epochs = 4
    spec = json.loads(json.dumps(SPEC))
    spec["training"].update({"epochs": epochs, "steps_per_epoch": steps // epochs, "precision": precision})
    run = workdir / f"run-{precision}"
    t0 = time.perf_counter()
    train(
        parse_spec(spec, "bench"),
        [str(sim / "noisy" / "img_000.tif")],
        None,
        run,
        device=device,
        progress=False,
        overwrite=True,
    )
    wall = time.perf_counter() - t0
    train_rss = _peak_rss_gib()  # the high-water mark of training alone, before denoising below
    rows = [line.split(",") for line in (run / "metrics.csv").read_text().strip().splitlines()[1:]]
    speeds = [float(r[6]) for r in rows]
    noisy = read_image(sim / "noisy" / "img_000.tif").data
    gt = read_image(sim / "gt" / "img_000.tif").data
    den = Predictor.from_run_dir(run, device).predict(noisy, "YX", precision=precision)
    return {
        "precision": precision,
        "steps": steps,
        "train_patches_per_s": statistics.median(speeds[1:] if len(speeds) > 1 else speeds),
        "train_wall_s": wall,
        "psnr_input": psnr(gt, noisy),
        "psnr_after_steps": psnr(gt, den),
        "peak_rss_gib_training": train_rss,
        "peak_rss_gib": _peak_rss_gib(),
    }


def phase_predict(workdir: Path, precision: str, device: str) -> dict:
    import numpy as np
    import torch

    from ai4life_kit.data.tiff_io import read_image
    from ai4life_kit.prediction import Predictor

    run = workdir / "run-fp32"
    predictor = Predictor.from_run_dir(run, device)
    img = read_image(workdir / "sim" / "noisy" / "img_000.tif").data
    mpix = img.size / 1e6
    predictor.predict(img, "YX", precision=precision)  # warm-up (oneDNN picks its kernels)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        predictor.predict(img, "YX", precision=precision)
        times.append(time.perf_counter() - t0)
    # the bare network on the whole (already normalised) image: the ceiling tiling works against
    x = torch.from_numpy(((img - img.mean()) / img.std()).astype(np.float32))[None, None].to(predictor.device)
    fwd = predictor._forward(precision)
    fwd(x)
    t0 = time.perf_counter()
    fwd(x)
    forward_s = time.perf_counter() - t0
    return {
        "precision": precision,
        "predict_mpix_per_s_tiled": mpix / statistics.median(times),
        "forward_mpix_per_s": mpix / forward_s,
        "tile": f"default (512, halo {predictor.halo})",
        "peak_rss_gib": _peak_rss_gib(),
    }


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"benchmark phase {args[:2]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _timed(cmd: list[str], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps (batches of 64)")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "train":
        print(json.dumps(phase_train(Path(args.workdir), args.steps, args.precision[0], args.device)))
        return
    if args.phase == "predict":
        print(json.dumps(phase_predict(Path(args.workdir), args.precision[0], args.device)))
        return

    from ai4life_kit.simulate import simulate_dataset

    RESULTS.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).parent / "ai4life-kit"
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, {_cpus()} CPUs, {platform.platform()}",
        "device": args.device,
        "import_s": _timed([sys.executable, "-c", "import ai4life_kit.training, ai4life_kit.prediction"]),
        "help_s": _timed([str(exe), "--help"]),
        "reference_careamics": REFERENCE,
        "train": [],
        "predict": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        simulate_dataset(work / "sim", shape=(1024, 1024), n=1, peak=20.0, read_noise=2.0, seed=0)
        for precision in ["fp32", *[p for p in args.precision if p != "fp32"]]:
            common = ["--workdir", str(work), "--precision", precision, "--device", args.device]
            results["train"].append(_child(["--phase", "train", "--steps", str(args.steps), *common]))
            results["predict"].append(_child(["--phase", "predict", *common]))
    (RESULTS / "train_predict.json").write_text(json.dumps(results, indent=2))
    table = _markdown(results)
    (RESULTS / "train_predict.md").write_text(table)
    print(table)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _markdown(r: dict) -> str:
    ref = r["reference_careamics"]
    lines = [
        f"Measured {r['date']} on {r['machine']} ({r['device']}); 1024x1024 simulated image (peak 20),",
        "N2V2, U-Net depth 2 / width 32, 64x64 patches, batch 64. Ratio = ai4life-kit / CAREamics 0.3.5.",
        "",
        "| metric | precision | ai4life-kit | CAREamics 0.3.5 | ratio |",
        "|---|---|---|---|---|",
    ]
    for t, p in zip(r["train"], r["predict"], strict=True):
        prec = t["precision"]
        tiled_ratio = p["predict_mpix_per_s_tiled"] / ref["predict_mpix_per_s_tiled"]
        lines += [
            f"| training patches/s | {prec} | {t['train_patches_per_s']:.1f} | {ref['train_patches_per_s']} | "
            f"{t['train_patches_per_s'] / ref['train_patches_per_s']:.2f}x |",
            f"| prediction MPix/s (tiled) | {prec} | {p['predict_mpix_per_s_tiled']:.3f} | "
            f"{ref['predict_mpix_per_s_tiled']} | {tiled_ratio:.2f}x |",
            f"| bare forward MPix/s | {prec} | {p['forward_mpix_per_s']:.3f} | {ref['forward_mpix_per_s']} | "
            f"{p['forward_mpix_per_s'] / ref['forward_mpix_per_s']:.2f}x |",
            f"| peak RSS training (GiB) | {prec} | {t['peak_rss_gib_training']:.2f} | {ref['peak_rss_gib']} | |",
            f"| peak RSS training + denoising (GiB) | {prec} | {t['peak_rss_gib']:.2f} | | |",
            f"| peak RSS prediction (GiB) | {prec} | {p['peak_rss_gib']:.2f} | | |",
            f"| PSNR after {t['steps']} steps (input {t['psnr_input']:.2f} dB) | {prec} | "
            f"{t['psnr_after_steps']:.2f} dB | | |",
        ]
    lines += [
        f"| import time (s) | | {r['import_s']:.2f} | {ref['import_s']} | {r['import_s'] / ref['import_s']:.2f}x |",
        f"| `ai4life-kit --help` (s) | | {r['help_s']:.2f} | | |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
