"""CUDA paths (bf16 autocast, channels-last, on-device sampling): run where a GPU is, skip elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ai4life_kit.data.tiff_io import read_image
from ai4life_kit.metrics import psnr
from ai4life_kit.prediction import Predictor
from ai4life_kit.simulate import simulate_dataset
from ai4life_kit.training import train
from kit_helpers import small_spec

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_training_and_prediction_match_cpu_quality(tmp_path):
    sim = simulate_dataset(tmp_path / "sim", shape=(256, 256), n=1, peak=20.0, seed=1)
    spec = small_spec("n2v2", training__epochs=3, training__steps_per_epoch=30)
    run = train(spec, [str(sim["noisy"][0])], None, tmp_path / "run", device="cuda", progress=False)
    noisy = read_image(sim["noisy"][0]).data
    gt = read_image(sim["gt"][0]).data
    gpu = Predictor.from_run_dir(run, "cuda").predict(noisy, "YX")  # bf16 autocast by default on CUDA
    cpu = Predictor.from_run_dir(run, "cpu").predict(noisy, "YX", precision="fp32")
    assert psnr(gt, gpu) > psnr(gt, noisy) + 3
    # bf16 on the GPU stays within a small fraction of the fp32 CPU result
    assert np.abs(gpu - cpu).mean() < 0.02 * cpu.std()
