"""Short real trainings: every algorithm in 2D and 3D must clearly improve PSNR; resume is exact."""

from __future__ import annotations

import copy
import json
import os
import signal
import time

import numpy as np
import pytest
import torch

from ai4life_kit.data.tiff_io import read_image
from ai4life_kit.prediction import Predictor
from ai4life_kit.simulate import simulate_dataset
from ai4life_kit.training import train
from kit_helpers import mean_image_psnr, psnr_gain, run_cli, small_spec

SHAPES = {2: (128, 128), 3: (24, 64, 64)}
SIM = {"n": 2, "peak": 20.0, "read_noise": 2.0, "pairs": True, "seed": 3}  # plus shape and structured noise


def budget(algorithm: str, dims: int) -> dict:
    """The spec overrides of test_training_improves_psnr: 100 steps, except for structN2V in 3D.

    structN2V also hides the pixels along x around each blind spot, so it learns more slowly: in 3D
    (bench_quality_seeds.py, 5 seeds) 150 steps at a constant rate left 1 seed below the mean image
    and 250 steps still jumped from epoch to epoch (seed 42: +7.3 dB); 250 steps with a cosine decay
    settle (11.4 / 12.0 / 14.2 dB, min / median / max over 5 seeds).
    """
    if (algorithm, dims) == ("structn2v", 3):
        return {"training__epochs": 10, "training__lr_schedule": "cosine"}
    return {"training__epochs": 4}


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """Simulated data per (dims, structured noise), generated once per module."""
    cache = {}

    def get(dims: int, structured: str = "none"):
        key = (dims, structured)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"sim{dims}d{structured}")
            cache[key] = simulate_dataset(out / "sim", shape=SHAPES[dims], structured_noise=structured, **SIM)
        return cache[key]

    return get


CASES = [
    ("n2v", 2),
    ("n2v2", 2),
    ("structn2v", 2),
    ("n2n", 2),
    ("care", 2),
    ("n2v", 3),
    ("n2v2", 3),
    ("structn2v", 3),
    ("n2n", 3),
    ("care", 3),
]


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "dims"), CASES, ids=[f"{a}-{d}d" for a, d in CASES])
def test_training_improves_psnr(sims, tmp_path, algorithm, dims):
    structured = "row" if algorithm == "structn2v" else "none"
    sim = sims(dims, structured)
    data = [str(p) for p in sim["noisy"]]
    target = None
    if algorithm == "care":
        target = [str(p) for p in sim["gt"]]
    elif algorithm == "n2n":
        target = [str(p) for p in sim["noisy2"]]
    spec = small_spec(algorithm, dims, **budget(algorithm, dims))
    run = train(spec, data, target, tmp_path / "run", device="cpu", progress=False)

    predictor = Predictor.from_run_dir(run, "cpu")
    noisy = read_image(sim["noisy"][0]).data
    gt = read_image(sim["gt"][0]).data
    denoised = predictor.predict(noisy, "ZYX" if dims == 3 else "YX")
    before, after = psnr_gain(gt, noisy, denoised)
    assert denoised.shape == noisy.shape and denoised.dtype == np.float32
    # A real denoiser: several dB better than the input, and better than the mean image (a model that
    # learned nothing), which on these 3D and row-noise images already beats the input by 5-10 dB.
    # benchmarks/bench_quality_seeds.py --setups training-... measures both over seeds: the worst of 5
    # seeds clears the mean image by 1.4 dB (structN2V 2D) to 9 dB (CARE 3D); see the README.
    null = mean_image_psnr(gt, noisy)
    assert after > max(before + 3.0, null), f"{algorithm} {dims}D: {before:.2f} -> {after:.2f} dB (mean {null:.2f})"
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + spec.training.epochs
    assert (run / "loss.png").stat().st_size > 1000
    summary = json.loads((run / "training_summary.json").read_text())
    assert (
        summary["algorithm"] == algorithm and summary["steps"] == spec.training.epochs * spec.training.steps_per_epoch
    )


def test_resume_continues_exactly(tmp_path, sims):
    """2 epochs + resume to 4 gives the same weights as 4 epochs straight (RNG, optimiser restored)."""
    sim = sims(2)
    data = [str(sim["noisy"][0])]
    straight = train(
        small_spec("n2v2", training__epochs=4, training__steps_per_epoch=5),
        data,
        None,
        tmp_path / "a",
        device="cpu",
        progress=False,
    )
    train(
        small_spec("n2v2", training__epochs=2, training__steps_per_epoch=5),
        data,
        None,
        tmp_path / "b",
        device="cpu",
        progress=False,
    )
    resumed = train(
        small_spec("n2v2", training__epochs=4, training__steps_per_epoch=5),
        data,
        None,
        tmp_path / "b",
        device="cpu",
        progress=False,
        resume=True,
    )
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for key, value in a["model_state"].items():
        torch.testing.assert_close(b["model_state"][key], value, rtol=1e-5, atol=1e-6)
    assert len((resumed / "metrics.csv").read_text().strip().splitlines()) == 5


@pytest.mark.slow
def test_kill_9_loses_at_most_one_epoch(tmp_path, sims):
    """A real SIGKILL mid-training; --resume continues from the last finished epoch, nothing half-written."""
    sim = sims(2)
    spec_path = tmp_path / "spec.yaml"
    from ai4life_kit.config import save_spec

    save_spec(small_spec("n2v", training__epochs=50, training__steps_per_epoch=5), spec_path)
    run = tmp_path / "run"
    args = ["train", spec_path, "--data", sim["noisy"][0], "--out", run, "--device", "cpu", "--quiet"]
    from kit_helpers import subprocess, sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "ai4life_kit", *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            metrics = run / "metrics.csv"
            if metrics.is_file() and len(metrics.read_text().strip().splitlines()) >= 3:  # 2 epochs done
                break
            time.sleep(0.05)
        else:
            pytest.fail("training did not finish two epochs in time")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    done = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    assert done >= 2
    result = run_cli(*args, "--resume", "--epochs", str(done + 2))
    assert result.returncode == 0, result.stderr
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == done + 2
    epochs = [int(r.split(",")[0]) for r in (run / "metrics.csv").read_text().strip().splitlines()[1:]]
    assert epochs == list(range(1, done + 3))
    assert not list(run.rglob(".*.tmp*"))  # temporary files of the killed run were cleaned up
    Predictor.from_run_dir(run, "cpu")  # still a usable run directory


def test_seeded_training_is_reproducible(tmp_path, sims):
    sim = sims(2)
    spec = small_spec("n2v", training__epochs=1, training__steps_per_epoch=3)
    a = train(spec, [str(sim["noisy"][0])], None, tmp_path / "a", device="cpu", progress=False)
    b = train(spec, [str(sim["noisy"][0])], None, tmp_path / "b", device="cpu", progress=False)
    wa = torch.load(a / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    wb = torch.load(b / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_compiled_training_writes_the_same_kind_of_run(tmp_path, sims, monkeypatch):
    """`training.compile`: torch.compile'd steps train, and checkpoints keep the plain module's keys."""
    sim = sims(2)
    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(m) or real_compile(m, **kw))
    spec = small_spec("n2v2", training__epochs=1, training__steps_per_epoch=3, training__compile=True)
    run = train(spec, [str(sim["noisy"][0])], None, tmp_path / "run", device="cpu", progress=False)
    assert len(compiled) == 1
    plain = small_spec("n2v2", training__epochs=1, training__steps_per_epoch=3)
    ref = train(plain, [str(sim["noisy"][0])], None, tmp_path / "ref", device="cpu", progress=False)
    a = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    b = torch.load(ref / "checkpoints" / "best.pt", weights_only=True)["model_state"]
    assert a.keys() == b.keys()
    # the same steps on the same patches: the losses agree (the weights after Adam steps need not:
    # Adam's normalised update turns rounding differences of tiny gradients into lr-sized steps)
    loss = {
        name: float((r / "metrics.csv").read_text().splitlines()[1].split(",")[2])
        for name, r in (("c", run), ("e", ref))
    }
    assert loss["c"] == pytest.approx(loss["e"], rel=0.02)
    assert Predictor.from_run_dir(run, "cpu").predict(read_image(sim["noisy"][0]).data, "YX").shape == (128, 128)


def test_ema_weights_are_validated_kept_as_best_and_resumed_exactly(tmp_path, sims):
    """training.ema_decay: best.pt holds the averaged weights; last.pt both; a resume continues both exactly."""
    sim = sims(2)
    data = [str(sim["noisy"][0])]

    def run(out, epochs, resume=False):
        spec = small_spec("n2v", training__epochs=epochs, training__steps_per_epoch=5, training__ema_decay=0.9)
        return train(spec, data, None, out, device="cpu", progress=False, resume=resume)

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume=True)
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=True)
    for key, value in a["ema_state"].items():
        torch.testing.assert_close(b["ema_state"][key], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b["model_state"][key], a["model_state"][key], rtol=1e-5, atol=1e-6)
    weight = next(k for k, v in a["model_state"].items() if v.is_floating_point() and v.ndim > 1)
    assert not torch.equal(a["ema_state"][weight], a["model_state"][weight])  # an average, not a copy
    best = torch.load(straight / "checkpoints" / "best.pt", weights_only=True)
    if best["epoch"] == a["epoch"]:
        torch.testing.assert_close(best["model_state"][weight], a["ema_state"][weight], rtol=0, atol=0)
    else:  # an earlier epoch's average: never the raw weights of the last epoch
        assert not torch.equal(best["model_state"][weight], a["model_state"][weight])
    # Prediction from the run directory uses best.pt, i.e. the averaged weights
    assert Predictor.from_run_dir(straight, "cpu").predict(np.zeros((64, 64), np.float32), "YX").shape == (64, 64)


def test_ema_update_follows_the_weights_the_optimiser_changes_in_place():
    """The (average, weight) pairs are taken once; each update must see the optimiser's latest weights."""
    from ai4life_kit.training.session import _ema_pairs, _update_ema

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    ema = copy.deepcopy(model)
    pairs = _ema_pairs(ema, model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for step in (1, 2):
        before = ema[0].weight.detach().clone()
        model(torch.randn(2, 1, 8, 8)).sum().backward()
        opt.step()  # in place, as Adam does in training
        model[1].num_batches_tracked += 1
        _update_ema(pairs, 0.99, step)
        d = min(0.99, (1 + step) / (10 + step))
        torch.testing.assert_close(ema[0].weight, d * before + (1 - d) * model[0].weight.detach())
        assert int(ema[1].num_batches_tracked) == int(model[1].num_batches_tracked)  # integers copied
