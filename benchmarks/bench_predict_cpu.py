"""CPU prediction: the border treatment, fp32 vs bf16 autocast vs ONNX Runtime, and 3D volumes.

Run from the repository root:

    .venv/bin/python benchmarks/bench_predict_cpu.py [--steps-2d 300] [--steps-3d 150] [--repeats 3]

It trains one N2V model per dimensionality with the shipped recipe on a real image made noisy
(stardist's nuclei, 512 x 512, and scikit-image's cells3d nucleus crop, 48 x 60 x 50, both at a
Poisson peak of 20 photons plus Gaussian read noise; see ``_realdata.py``), then predicts with each
mode and reports:

- MPix/s (median of ``--repeats`` calls after a warm-up, on this process's torch threads) on the
  2D image tiled 2 x 2 (1024 x 1024, so the default 768-pixel tiles really tile), the 3D volume, and
  (one call) a thin volume of 64 x 512 x 512 (the volume mirrored out to that size);
- PSNR against the ground truth over the whole image and over its border band (pixels within the
  halo of an edge), and the change against fp32 with the default border;
- for the borders: the largest and mean absolute difference between ``network`` and ``mirror``
  inside the band (outside it they agree to float rounding, which is tested).

Modes: ``fp32`` (the default on the CPU), ``fp32-mirror`` (bioimage.io's border, the kit's former
default), ``bf16`` (autocast), ``onnx`` (``--engine onnx``: the network exported to ONNX and run by
ONNX Runtime over the same tiles), and two ablations of the default: ``fp32-unfolded`` (batch norm
run as its own layers instead of folded into the convolutions) and ``fp32-small-tiles`` (the grid
before the batch budget: tiles within one default tile, batches of 4). Results:
benchmarks/results/predict_cpu.{json,md}.
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
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from _realdata import load_image, poisson_gaussian  # noqa: E402
from bench_careamics import _time_calls  # noqa: E402

from ai4life_kit.config import parse_spec  # noqa: E402
from ai4life_kit.data.tiff_io import write_image  # noqa: E402
from ai4life_kit.metrics import psnr  # noqa: E402
from ai4life_kit.prediction import Predictor  # noqa: E402
from ai4life_kit.training import train  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
THIN = (64, 512, 512)


def _data(dims: int) -> tuple[np.ndarray, np.ndarray]:
    name = "stardist-2d" if dims == 2 else "cells3d-nucleus"
    clean = load_image(name)
    if dims == 3:
        clean = clean[:48]  # 48 x 60 x 50
    gt, noisy = poisson_gaussian(clean, 20, 2, np.random.default_rng(0))
    return gt, noisy


def _train(dims: int, noisy: np.ndarray, steps: int, work: Path) -> Path:
    import yaml

    spec = yaml.safe_load((REPO / "model_specs" / f"n2v-{dims}d.yaml").read_text())
    spec["training"] |= {"epochs": max(1, steps // 25), "steps_per_epoch": 25, "early_stopping_patience": None}
    if dims == 3:  # the volume is 48 x 60 x 50: patches as bench_careamics.py trains them
        spec["data"]["patch_size"] = [16, 32, 32]
    data = work / f"noisy{dims}d.tif"
    write_image(data, noisy, "YX" if dims == 2 else "ZYX", overwrite=True)
    run = work / f"run{dims}d"
    train(parse_spec(spec, "bench"), [data], None, run, device="cpu", progress=False, overwrite=True)
    return run


def _border_band(shape: tuple[int, ...], halo: int) -> np.ndarray:
    band = np.ones(shape, bool)
    band[tuple(slice(halo, n - halo) for n in shape)] = False
    return band


def _predict(predictor: Predictor, image: np.ndarray, axes: str, mode: str) -> np.ndarray:
    predictor.border = "mirror" if mode == "fp32-mirror" else "network"
    predictor.engine = "onnx" if mode == "onnx" else "torch"  # ONNX Runtime: the same tiles and batches
    tile = None
    if mode == "fp32-small-tiles":  # the grid of one default tile per tile, as before the batch budget
        tile = predictor.plan(image.shape[-predictor.spatial_ndim :], batch_size=1).tile
    # The predictor runs a module wrapping its U-Net as it is (unfolded), so the ablation wraps it
    # for this call only; the U-Net itself, and its folded copy, stay as they were.
    unet = predictor.model
    if mode == "fp32-unfolded":
        predictor.model = torch.nn.Sequential(unet)
    try:
        return predictor.predict(image, axes, tile=tile, precision="bf16" if mode == "bf16" else "fp32")
    finally:
        predictor.model = unet


def _mpix_s(fn: Any, size: int, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        return size / 1e6 / _time_calls(fn, repeats)
    t0 = time.perf_counter()
    fn()
    return size / 1e6 / (time.perf_counter() - t0)


def bench(dims: int, steps: int, repeats: int, work: Path) -> dict[str, Any]:
    gt, noisy = _data(dims)
    t0 = time.perf_counter()
    run = _train(dims, noisy, steps, work)
    train_s = time.perf_counter() - t0
    predictor = Predictor.from_run_dir(run, "cpu")
    axes = "YX" if dims == 2 else "ZYX"
    band = _border_band(gt.shape, predictor.halo)
    rng = float(gt.max() - gt.min())
    if dims == 2:
        speed_images = {"2x2 mosaic": np.tile(noisy, (2, 2))}
    else:
        widths = [(0, t - n) for t, n in zip(THIN, noisy.shape, strict=True)]
        speed_images = {"volume": noisy, "thin volume": np.pad(noisy, widths, mode="symmetric")}
    modes = ["fp32", "fp32-mirror", "bf16", "onnx", "fp32-unfolded", "fp32-small-tiles"]
    out: dict[str, Any] = {"train_s": round(train_s, 1), "steps": steps, "halo": predictor.halo, "modes": {}}
    preds = {}
    for mode in modes:
        pred = _predict(predictor, noisy, axes, mode)
        preds[mode] = pred
        row = {
            "psnr": psnr(gt, pred, data_range=rng),
            "psnr_border": psnr(gt[band], pred[band], data_range=rng),
            # None where every pixel is within the halo of an edge (the 48-slice volume, halo 32)
            "psnr_inner": psnr(gt[~band], pred[~band], data_range=rng) if (~band).any() else None,
        }
        for name, img in speed_images.items():
            key = f"mpix_s {name} {'x'.join(map(str, img.shape))}"
            # The thin volume takes a minute a call: once, warm from the volume before it.
            thin = name == "thin volume"
            row[key] = _mpix_s(
                lambda img=img, mode=mode: _predict(predictor, img, axes, mode),
                img.size,
                1 if thin else repeats,
                warm_up=not thin,
            )
        out["modes"][mode] = row
        print(dims, mode, json.dumps(row), flush=True)
    base = out["modes"]["fp32"]
    for row in out["modes"].values():
        row["delta_psnr_db"] = row["psnr"] - base["psnr"]
    diff = np.abs(preds["fp32"] - preds["fp32-mirror"])
    out["border_difference"] = {
        "band_max_abs": float(diff[band].max()),
        "band_mean_abs": float(diff[band].mean()),
        "inner_max_abs": float(diff[~band].max()) if (~band).any() else None,
        "band_share_of_pixels": float(band.mean()),
        "gt_range": rng,
    }
    grid = predictor.plan(noisy.shape)
    predictor.border = "mirror"
    old = predictor.plan(noisy.shape)
    out["network_input_pixels"] = {
        "network": int(np.prod(grid.tile)) * len(grid),
        "mirror": int(np.prod(old.tile)) * len(old),
        "image": int(noisy.size),
    }
    return out


def _markdown(result: dict[str, Any]) -> str:
    lines = [f"# CPU prediction ({result['machine']['cpu']}, {result['machine']['threads']} torch threads)", ""]
    for dims, entry in result["dims"].items():
        lines += [f"## {dims}D (N2V, {entry['steps']} steps, halo {entry['halo']})", ""]
        speed_cols = [k for k in entry["modes"]["fp32"] if k.startswith("mpix_s")]
        lines.append("| mode | PSNR | border PSNR | inner PSNR | dPSNR vs fp32 | " + " | ".join(speed_cols) + " |")
        lines.append("|---" * (5 + len(speed_cols)) + "|")
        for mode, row in entry["modes"].items():
            cells = [f"{row[k]:.2f}" if row[k] is not None else "n/a" for k in ("psnr", "psnr_border", "psnr_inner")]
            cells += [f"{row['delta_psnr_db']:+.3f}"] + [f"{row[c]:.3f}" if row[c] else "n/a" for c in speed_cols]
            lines.append(f"| {mode} | " + " | ".join(cells) + " |")
        b = entry["border_difference"]
        lines += [
            "",
            f"network vs mirror border: max |diff| {b['band_max_abs']:.3g}, mean {b['band_mean_abs']:.3g} in the "
            f"band ({100 * b['band_share_of_pixels']:.1f}% of pixels), {b['inner_max_abs'] or 0:.2g} inside "
            f"(ground-truth range {b['gt_range']:.3g}); network-input pixels {entry['network_input_pixels']}",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-2d", type=int, default=300)
    parser.add_argument("--steps-3d", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    result: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "dims": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for dims, steps in ((2, args.steps_2d), (3, args.steps_3d)):
            result["dims"][str(dims)] = bench(dims, steps, args.repeats, Path(tmp))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "predict_cpu.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "predict_cpu.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
