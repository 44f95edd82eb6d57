"""Small helpers shared by the tests: simulated data, short specs, CLI invocation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from ai4life_kit.cli.app import app
from ai4life_kit.config import parse_spec
from ai4life_kit.config.spec import TrainingSpec
from ai4life_kit.metrics import psnr

runner = CliRunner()


def invoke(*args: str):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    return runner.invoke(app, [str(a) for a in args])


def run_cli(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """Run the CLI as a real process (exit codes, tracebacks and stderr exactly as a user sees them)."""
    return subprocess.run(
        [sys.executable, "-m", "ai4life_kit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def small_spec(algorithm: str, dims: int = 2, **overrides) -> TrainingSpec:
    """A fast spec: small U-Net, small patches, a few hundred steps at most."""
    alg = {"name": algorithm}
    if algorithm == "structn2v":
        alg["struct_mask"] = {"axis": "x", "span": 5}
    patch = [32, 32] if dims == 2 else [16, 32, 32]
    spec = {
        "algorithm": alg,
        "model": {"depth": 2, "width": 16, "residual": algorithm == "care"},
        "data": {"dims": dims, "patch_size": patch, "val_fraction": 0.1},
        "training": {
            "epochs": 4,
            "steps_per_epoch": 25,
            "batch_size": 16 if dims == 2 else 4,
            "learning_rate": 2e-3,
            "val_patches": 32,
            "early_stopping_patience": None,
        },
    }
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        spec[section][key] = value
    return parse_spec(spec, "test")


def psnr_gain(gt: np.ndarray, noisy: np.ndarray, denoised: np.ndarray) -> tuple[float, float]:
    """(input PSNR, output PSNR) against the ground truth."""
    return psnr(gt, noisy), psnr(gt, denoised)


# The data, budget and threshold of the quality tests that train N2V2 through the CLI
# (tests/test_distributed.py, tests/test_lazy_data.py). 200 steps of 16 patches and 256 validation
# patches: at 100 steps the gain still depended on the seed and the CPU's rounding (18.44 -> 21.28 dB
# on one AMD EPYC, below the 3 dB asked; 1.9 dB, below the mean image, for 1 lazy-loading seed in 5).
# benchmarks/bench_quality_seeds.py measured at this budget (8 seeds, min / median / max): 6.0 / 8.1 /
# 8.7 dB with 2 gloo processes, 5.1 / 7.8 / 8.7 dB lazily loaded; see the README's "Reproducibility".
# Another CPU moves a run as another seed does, so the threshold sits 2 dB or more below the worst seed.
QUALITY_SIM = {"shape": (128, 128), "n": 2, "peak": 20.0, "read_noise": 2.0, "seed": 3}
QUALITY_BUDGET = {"training__epochs": 8, "training__steps_per_epoch": 25, "training__val_patches": 256}
QUALITY_MIN_GAIN_DB = 3.0


def mean_image_psnr(gt: np.ndarray, noisy: np.ndarray) -> float:
    """What a model that learned nothing but the mean scores: the noisy image's mean everywhere.

    On strongly structured or 3D test data this beats the noisy input by 5-10 dB, so a quality
    test that only asks for a gain over the input can pass with a model that learned nothing.
    """
    return psnr(gt, np.full_like(noisy, noisy.mean()))


def tiff_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tif"))
