"""The denoising gain that the test suite's quality tests assert, over training seeds and thread counts.

Run from the repository root:

    .venv/bin/python benchmarks/bench_quality_seeds.py [--setups distributed lazy-tiff ...]
        [--seeds 42 0 1 2 3 4 5 6 7 8 9] [--threads 1 2] [--set training__lr_schedule=cosine ...]

Each setup is one quality test's training, exactly as the test runs it (the same simulated data,
spec, process count and checkpoint), with ``--seed S`` added. A test that passes for every seed here
passes on another CPU too: another CPU model, instruction set or thread count rounds differently,
which sends a short training down another path, as another seed does. For each setup it prints the
gain in dB (output PSNR minus input PSNR against the ground truth) per seed, its min / median / max,
the threshold the test asserts, what a model that learned nothing scores (identity: 0 dB; the mean
image), whether the trained weights are bit-identical across the thread counts, and the wall time.
``--set`` adds spec overrides (``small_spec`` keywords) to try another budget. The raw numbers go to
``benchmarks/results/quality_seeds.json``.

Setups (the ``training-*`` ones are not run unless named, or with ``--setups all``):

- ``distributed``: tests/test_distributed.py::test_two_processes_denoise_as_well_as_one
  (2 gloo processes of ``torchrun``; ``--threads`` is OMP_NUM_THREADS per process, the test uses 1).
- ``lazy-tiff``, ``lazy-ome-zarr``: tests/test_lazy_data.py::test_lazy_training_denoises_like_in_memory_training
  (the ``--loading lazy`` run, whose output the test scores).
- ``cli``: tests/test_cli_train_predict.py::test_predict_keeps_shape_and_improves (8 steps; the gain
  is the lower one of the two images, as the test checks both).
- ``gpu-proxy-fp32``, ``gpu-proxy-bf16``: tests/test_gpu.py's training and data on the CPU, in fp32
  and in bf16 autocast (CUDA's default); the GPU itself gives other numbers again.
- ``training-<algorithm>-<dims>d``: tests/test_training.py::test_training_improves_psnr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' own helpers and constants

import test_distributed  # noqa: E402
import test_lazy_data  # noqa: E402
import test_training  # noqa: E402
from ai4life_kit.config import save_spec  # noqa: E402
from ai4life_kit.data.tiff_io import read_image  # noqa: E402
from ai4life_kit.metrics import psnr  # noqa: E402
from ai4life_kit.prediction import Predictor  # noqa: E402
from ai4life_kit.simulate import simulate_dataset  # noqa: E402
from ai4life_kit.training import train  # noqa: E402
from kit_helpers import (  # noqa: E402
    QUALITY_BUDGET,
    QUALITY_MIN_GAIN_DB,
    QUALITY_SIM,
    invoke,
    mean_image_psnr,
    psnr_gain,
    small_spec,
)

RESULTS = ROOT / "benchmarks" / "results"
# Thresholds written inline in the tests (the others are the tests' own constants).
CLI_MIN_GAIN_DB = 0.0  # tests/test_cli_train_predict.py: psnr(gt, den) > psnr(gt, noisy) + 0.0
GPU_MIN_GAIN_DB = 3.0  # tests/test_gpu.py: psnr(gt, gpu) > psnr(gt, noisy) + 3.0
TRAINING_MIN_GAIN_DB = 3.0  # tests/test_training.py: after > before + 3.0


def weights_digest(run: Path) -> str:
    """A short hash of the best checkpoint's weights: equal digests, bit-identical models."""
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def mean_image_gain(gt: np.ndarray, noisy: np.ndarray) -> float:
    """What a model that learned only the mean scores: the noisy image's mean everywhere."""
    return mean_image_psnr(gt, noisy) - psnr(gt, noisy)


def one_thread_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


class InProcessThreads:
    """``torch.set_num_threads(n)`` for the in-process setups, restored afterwards."""

    def __init__(self, n: int):
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self):
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def run_distributed(work: Path, seed: int, threads: int, overrides: dict) -> dict:
    td = test_distributed
    sim = simulate_dataset(work / "sim", **QUALITY_SIM, overwrite=True)
    spec = work / "spec.yaml"
    save_spec(small_spec("n2v2", **{**QUALITY_BUDGET, **overrides}), spec)
    run = work / "run"
    res = td.torchrun(spec, "--data", sim["noisy"][0], "--out", run, "--seed", seed, "--overwrite", "-q",
                      env=one_thread_env(threads))  # fmt: skip
    if res.returncode:
        raise RuntimeError(res.stderr)
    before, after = td.denoising_gain(run, sim)
    noisy, gt = read_image(sim["noisy"][0]).data, read_image(sim["gt"][0]).data
    return {"gain": after - before, "input_psnr": before, "null_gain": mean_image_gain(gt, noisy), "run": run}


def run_lazy(fmt: str) -> Callable[[Path, int, int, dict], dict]:
    def run(work: Path, seed: int, threads: int, overrides: dict) -> dict:
        # a fresh folder each time: train_on_stack simulates into it without --overwrite
        root = Path(tempfile.mkdtemp(dir=work))
        runs, noisy, gt = test_lazy_data.train_on_stack(
            root, fmt, loadings=("lazy",), seed=seed, env=one_thread_env(threads), **overrides
        )
        denoised = Predictor.from_run_dir(runs["lazy"], "cpu").predict(noisy[0], "YX")
        before, after = psnr_gain(gt, noisy[0], denoised)
        return {"gain": after - before, "input_psnr": before, "null_gain": mean_image_gain(gt, noisy[0]),
                "run": runs["lazy"]}  # fmt: skip

    return run


def run_cli_setup(work: Path, seed: int, threads: int, overrides: dict) -> dict:
    """tests/test_cli_train_predict.py's fixtures (sim, spec_file, trained_run) and its predict call."""
    sim = simulate_dataset(work / "sim", shape=(96, 96), n=2, peak=20.0, pairs=True, seed=5, overwrite=True)
    spec = work / "spec.yaml"
    save_spec(small_spec("n2v2", **{"training__epochs": 2, "training__steps_per_epoch": 4, **overrides}), spec)
    run, out = work / f"run-{seed}-{threads}", work / f"den-{seed}-{threads}"
    with InProcessThreads(threads):
        result = invoke("train", spec, "--data", sim["noisy"][0].parent, "--out", run, "--device", "cpu",
                        "--seed", seed, "-q")  # fmt: skip
        if result.exit_code:
            raise RuntimeError(result.output)
        result = invoke("predict", run, *sim["noisy"], "--out", out, "--device", "cpu", "-q")
        if result.exit_code:
            raise RuntimeError(result.output)
    gains, nulls, inputs = [], [], []
    for noisy_path, gt_path in zip(sim["noisy"], sim["gt"], strict=True):
        gt, noisy = read_image(gt_path).data, read_image(noisy_path).data
        inputs.append(psnr(gt, noisy))
        gains.append(psnr(gt, read_image(out / noisy_path.name).data) - inputs[-1])
        nulls.append(mean_image_gain(gt, noisy))
    worst = int(np.argmin(gains))
    return {"gain": gains[worst], "input_psnr": inputs[worst], "null_gain": max(nulls), "run": run}


def run_gpu_proxy(precision: str) -> Callable[[Path, int, int, dict], dict]:
    """tests/test_gpu.py's data and spec, trained on the CPU in ``precision``, scored in fp32."""

    def run(work: Path, seed: int, threads: int, overrides: dict) -> dict:
        sim = simulate_dataset(work / "sim", shape=(256, 256), n=1, peak=20.0, seed=1, overwrite=True)
        base = {"training__epochs": 3, "training__steps_per_epoch": 30, "training__precision": precision}
        spec = small_spec("n2v2", **{**base, **overrides, "training__seed": seed})
        with InProcessThreads(threads):
            run = train(spec, [str(sim["noisy"][0])], None, work / "run", device="cpu", overwrite=True,
                        progress=False)  # fmt: skip
            noisy, gt = read_image(sim["noisy"][0]).data, read_image(sim["gt"][0]).data
            denoised = Predictor.from_run_dir(run, "cpu").predict(noisy, "YX", precision="fp32")
        before, after = psnr_gain(gt, noisy, denoised)
        return {"gain": after - before, "input_psnr": before, "null_gain": mean_image_gain(gt, noisy), "run": run}

    return run


def run_training_case(algorithm: str, dims: int) -> Callable[[Path, int, int, dict], dict]:
    """tests/test_training.py::test_training_improves_psnr for one (algorithm, dims)."""

    def run(work: Path, seed: int, threads: int, overrides: dict) -> dict:
        structured = "row" if algorithm == "structn2v" else "none"
        sim = simulate_dataset(work / "sim", shape=test_training.SHAPES[dims], structured_noise=structured,
                               **test_training.SIM, overwrite=True)  # fmt: skip
        target = {"care": sim["gt"], "n2n": sim["noisy2"]}.get(algorithm)
        base = test_training.budget(algorithm, dims)
        spec = small_spec(algorithm, dims, **{**base, **overrides, "training__seed": seed})
        with InProcessThreads(threads):
            run = train(spec, [str(p) for p in sim["noisy"]], None if target is None else [str(p) for p in target],
                        work / "run", device="cpu", overwrite=True, progress=False)  # fmt: skip
            noisy, gt = read_image(sim["noisy"][0]).data, read_image(sim["gt"][0]).data
            denoised = Predictor.from_run_dir(run, "cpu").predict(noisy, "ZYX" if dims == 3 else "YX")
        before, after = psnr_gain(gt, noisy, denoised)
        return {"gain": after - before, "input_psnr": before, "null_gain": mean_image_gain(gt, noisy), "run": run}

    return run


SETUPS: dict[str, tuple[str, float, Callable]] = {
    "distributed": (
        "tests/test_distributed.py::test_two_processes_denoise_as_well_as_one",
        QUALITY_MIN_GAIN_DB,
        run_distributed,
    ),
    "lazy-tiff": (
        "tests/test_lazy_data.py::test_lazy_training_denoises_like_in_memory_training[tiff]",
        QUALITY_MIN_GAIN_DB,
        run_lazy("tiff"),
    ),
    "lazy-ome-zarr": (
        "tests/test_lazy_data.py::test_lazy_training_denoises_like_in_memory_training[ome-zarr]",
        QUALITY_MIN_GAIN_DB,
        run_lazy("ome-zarr"),
    ),
    "cli": ("tests/test_cli_train_predict.py::test_predict_keeps_shape_and_improves", CLI_MIN_GAIN_DB, run_cli_setup),
    "gpu-proxy-fp32": ("tests/test_gpu.py (CPU, fp32)", GPU_MIN_GAIN_DB, run_gpu_proxy("fp32")),
    "gpu-proxy-bf16": ("tests/test_gpu.py (CPU, bf16 autocast)", GPU_MIN_GAIN_DB, run_gpu_proxy("bf16")),
}
DEFAULT_SETUPS = list(SETUPS)
for _alg, _dims in test_training.CASES:
    SETUPS[f"training-{_alg}-{_dims}d"] = (
        f"tests/test_training.py::test_training_improves_psnr[{_alg}-{_dims}d]",
        TRAINING_MIN_GAIN_DB,
        run_training_case(_alg, _dims),
    )


def parse_override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    if "__" not in key or not value:
        raise argparse.ArgumentTypeError(f"--set {text!r}: use section__key=value, e.g. training__val_patches=256")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a plain string such as cosine


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    isa = torch.backends.cpu.get_cpu_capability()
    return f"{model} ({isa}), {os.cpu_count()} CPUs, torch {torch.__version__}, {platform.platform()}"


def summarise(name: str, rows: list[dict], threshold: float, threads: list[int]) -> dict:
    out: dict = {"threshold_db": threshold, "by_threads": {}}
    for t in threads:
        gains = [r["gain"] for r in rows if r["threads"] == t]
        out["by_threads"][t] = {
            "min": min(gains),
            "median": statistics.median(gains),
            "max": max(gains),
            "below_threshold": sum(g <= threshold for g in gains),
            "seconds": sum(r["seconds"] for r in rows if r["threads"] == t),
        }
    seeds = sorted({r["seed"] for r in rows}, key=[r["seed"] for r in rows].index)
    digests = {s: {r["digest"] for r in rows if r["seed"] == s} for s in seeds}
    out["bit_identical_across_threads"] = sum(len(d) == 1 for d in digests.values())
    out["seeds"] = len(seeds)
    out["mean_image_gain_db"] = max(r["null_gain"] for r in rows)
    worst = min(r["gain"] for r in rows)
    out["worst_margin_db"] = worst - threshold
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setups", nargs="+", default=DEFAULT_SETUPS, help=f"of {', '.join(SETUPS)}; or 'all'")
    ap.add_argument("--seeds", nargs="+", type=int, default=[42, *range(10)], help="42 is the spec default")
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[])
    args = ap.parse_args()
    setups = list(SETUPS) if args.setups == ["all"] else args.setups
    unknown = set(setups) - set(SETUPS)
    if unknown:
        ap.error(f"unknown setups {sorted(unknown)}; choose from {', '.join(SETUPS)}")
    overrides = dict(args.overrides)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "loadavg_start": os.getloadavg(),
        "seeds": args.seeds,
        "threads": args.threads,
        "overrides": overrides,
        "setups": {},
    }
    print(f"{report['machine']}\nseeds {args.seeds}, threads {args.threads}, overrides {overrides or 'none'}")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        for name in setups:
            test, threshold, fn = SETUPS[name]
            work = Path(tmp) / name
            work.mkdir()
            print(f"\n{name}: {test}; asserts gain > {threshold:g} dB", flush=True)
            rows = []
            for threads in args.threads:
                line = []
                for seed in args.seeds:
                    t0 = time.perf_counter()
                    r = fn(work, seed, threads, overrides)
                    seconds = time.perf_counter() - t0
                    r.update(seed=seed, threads=threads, seconds=seconds, digest=weights_digest(r["run"]))
                    del r["run"]
                    rows.append(r)
                    line.append(f"{seed}:{r['gain']:.2f}")
                print(f"  threads {threads}: " + " ".join(line), flush=True)
            s = summarise(name, rows, threshold, args.threads)
            for t, st in s["by_threads"].items():
                spread = f"{st['min']:.2f} / {st['median']:.2f} / {st['max']:.2f}"
                print(f"  threads {t}: min / median / max {spread} dB, "
                      f"{st['below_threshold']} of {s['seeds']} at or below {threshold:g} dB, "
                      f"{st['seconds']:.0f} s")  # fmt: skip
            worst = s["worst_margin_db"] + threshold
            print(f"  worst {worst:.2f} dB: {s['worst_margin_db']:+.2f} dB over the threshold "
                  f"({s['worst_margin_db'] / worst:.0%} of the worst gain); learned nothing: identity 0 dB, "
                  f"mean image {s['mean_image_gain_db']:.2f} dB; "
                  f"input PSNR {rows[0]['input_psnr']:.2f} dB")  # fmt: skip
            if len(args.threads) > 1:
                print(f"  weights bit-identical across threads {args.threads}: "
                      f"{s['bit_identical_across_threads']} of {s['seeds']} seeds")  # fmt: skip
            report["setups"][name] = {"test": test, **s, "runs": rows}
    report["seconds"] = time.perf_counter() - t_all
    report["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "quality_seeds.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nwall time {report['seconds']:.0f} s; raw numbers in {RESULTS / 'quality_seeds.json'}")


if __name__ == "__main__":
    main()
