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


def mean_image_psnr(gt: np.ndarray, noisy: np.ndarray) -> float:
    """What a model that learned nothing but the mean scores: the noisy image's mean everywhere.

    On strongly structured or 3D test data this beats the noisy input by 5-10 dB, so a quality
    test that only asks for a gain over the input can pass with a model that learned nothing.
    """
    return psnr(gt, np.full_like(noisy, noisy.mean()))


def tiff_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tif"))
