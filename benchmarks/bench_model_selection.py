"""Model selection over seeds: the raw weights against an exponential moving average (``ema_decay``).

Run from the repository root:

    .venv/bin/python benchmarks/bench_model_selection.py [--seeds 4] [--epochs 8] [--steps 25] [--decay 0.99]

N2V (shipped 2D recipe, batch 16, 64x64 patches) on stardist's 512x512 nuclei at a Poisson peak of
20 photons (see ``_realdata.py``), each seed trained twice: without and with ``training.ema_decay``.
For each run: the PSNR of ``best.pt`` (what ``predict`` and ``package`` use) and of ``last.pt``'s
raw weights on the whole image against the clean one. Reported: mean, standard deviation, min and
max over seeds, and the mean change from the last raw weights to the selected ones. Results:
benchmarks/results/model_selection.json and stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from _realdata import load_image, poisson_gaussian  # noqa: E402

from ai4life_kit.config import parse_spec  # noqa: E402
from ai4life_kit.data.tiff_io import write_image  # noqa: E402
from ai4life_kit.metrics import psnr  # noqa: E402
from ai4life_kit.prediction import Predictor  # noqa: E402
from ai4life_kit.training import train  # noqa: E402


def _run(noisy_tif: Path, out: Path, seed: int, args: argparse.Namespace, ema: float | None) -> Path:
    spec = yaml.safe_load((REPO / "model_specs" / "n2v-2d.yaml").read_text())
    spec["training"] |= {
        "epochs": args.epochs,
        "steps_per_epoch": args.steps,
        "batch_size": 16,
        "seed": seed,
        "early_stopping_patience": None,
        "ema_decay": ema,
    }
    return train(parse_spec(spec, "bench"), [noisy_tif], None, out, device="cpu", progress=False, overwrite=True)


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--decay", type=float, default=0.99)
    args = parser.parse_args()
    gt, noisy = poisson_gaussian(load_image("stardist-2d"), 20, 2, np.random.default_rng(0))
    rng = float(gt.max() - gt.min())
    rows: dict[str, dict[str, list[float]]] = {"raw": {"best": [], "last": []}, "ema": {"best": [], "last": []}}
    with tempfile.TemporaryDirectory() as tmp:
        noisy_tif = Path(tmp) / "noisy.tif"
        write_image(noisy_tif, noisy, "YX", overwrite=True)
        for seed in range(args.seeds):
            for name, ema in (("raw", None), ("ema", args.decay)):
                run = _run(noisy_tif, Path(tmp) / f"{name}-{seed}", seed, args, ema)
                for ckpt in ("best", "last"):
                    pred = Predictor.from_run_dir(run, "cpu", checkpoint=ckpt).predict(noisy, "YX", precision="fp32")
                    rows[name][ckpt].append(psnr(gt, pred, data_range=rng))
                print(seed, name, {k: round(v[-1], 3) for k, v in rows[name].items()}, flush=True)
    extra = {"torch_threads": torch.get_num_threads(), "input_psnr": psnr(gt, noisy, data_range=rng)}
    result = {
        "config": vars(args) | extra,
        "raw_weights": {k: _stats(v) for k, v in rows["raw"].items()},
        "ema": {k: _stats(v) for k, v in rows["ema"].items()},
        "per_seed": rows,
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_selection.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("config", "raw_weights", "ema")}, indent=2))


if __name__ == "__main__":
    main()
