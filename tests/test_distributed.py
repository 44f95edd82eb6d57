"""Multi-process training as a user launches it: ``torchrun -m ai4life_kit train`` with 2 CPU processes (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ai4life_kit.config import save_spec
from ai4life_kit.data.tiff_io import read_image
from ai4life_kit.errors import ConfigError
from ai4life_kit.prediction import Predictor
from ai4life_kit.simulate import simulate_dataset
from ai4life_kit.training.distributed import DistContext, local_batch_size
from ai4life_kit.training.report import read_metrics
from ai4life_kit.training.session import _rank_seed, _restore_rng
from kit_helpers import QUALITY_BUDGET, QUALITY_MIN_GAIN_DB, QUALITY_SIM, psnr_gain, run_cli, small_spec

# The quality tests' shared setup (kit_helpers: what was measured, and why this budget).
EPOCHS, STEPS = QUALITY_BUDGET["training__epochs"], QUALITY_BUDGET["training__steps_per_epoch"]
# One core per process: 2 processes share the 2 CI cores (more threads only contend for them).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
RUN_FILES = {
    "ai4life-kit-run.json",  # the marker that lets --overwrite know the folder is ours
    "spec.yaml",
    "normalization.json",
    "metrics.csv",
    "loss.png",
    "training_summary.json",
    "checkpoints",
    "checkpoints/best.pt",
    "checkpoints/last.pt",
}


def torchrun(*args: object, nproc: int = 2, timeout: float = 300, env=ONE_THREAD) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` (a free port of its own) with ``nproc`` CPU processes of ``ai4life-kit train``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone"]
    cmd += ["-m", "ai4life_kit", "train", *map(str, args), "--device", "cpu"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def denoising_gain(run: Path, sim: dict) -> tuple[float, float]:
    """(input PSNR, output PSNR) of the run's best checkpoint on the first simulated image."""
    noisy = read_image(sim["noisy"][0]).data
    gt = read_image(sim["gt"][0]).data
    return psnr_gain(gt, noisy, Predictor.from_run_dir(run, "cpu").predict(noisy, "YX"))


def run_files(run: Path) -> set[str]:
    return {p.relative_to(run).as_posix() for p in run.rglob("*")}


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model_state"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_dataset(tmp_path_factory.mktemp("ddp") / "sim", **QUALITY_SIM)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "n2v2.yaml"
    save_spec(small_spec("n2v2", **QUALITY_BUDGET), path)
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory, sim, spec_file):
    """A 2-process run of the whole spec: (run directory, torchrun's result)."""
    run = tmp_path_factory.mktemp("runs") / "straight"
    result = torchrun(spec_file, "--data", sim["noisy"][0], "--out", run)
    assert result.returncode == 0, result.stderr
    return run, result


@pytest.fixture(scope="module")
def half_batch_single(tmp_path_factory, sim, spec_file):
    """One process drawing 8 patches a step, as rank 0 of the 2-process run does."""
    run = tmp_path_factory.mktemp("runs") / "single"
    args = ["train", spec_file, "--data", sim["noisy"][0], "--out", run, "--device", "cpu", "--batch-size", 8, "-q"]
    result = run_cli(*args, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    return run


@pytest.mark.slow
def test_two_processes_denoise_as_well_as_one(straight, sim):
    run, _ = straight
    rows = read_metrics(run / "metrics.csv")
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    before, after = denoising_gain(run, sim)
    assert after > before + QUALITY_MIN_GAIN_DB, f"{before:.2f} -> {after:.2f} dB"


@pytest.mark.slow
def test_only_rank_zero_writes_and_prints(straight, half_batch_single):
    run, result = straight
    assert run_files(run) == run_files(half_batch_single) == RUN_FILES
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert [r["step"] for r in rows] == [STEPS * e for e in range(1, EPOCHS + 1)]
    output = result.stdout + result.stderr
    assert output.count("Run directory:") == 1
    assert output.count("train loss") == EPOCHS  # the per-epoch line of rank 0's progress display
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and last["global_step"] == EPOCHS * STEPS
    assert torch.equal(last["rng_state"], last["rng_states"][0])


@pytest.mark.slow
def test_each_rank_draws_its_own_patches(straight, half_batch_single):
    """Rank 0 keeps the single-process random stream (seed), rank 1 has another (seed + 1)."""
    last = torch.load(straight[0] / "checkpoints" / "last.pt", weights_only=True)
    single = torch.load(half_batch_single / "checkpoints" / "last.pt", weights_only=True)
    rank0, rank1 = last["rng_states"]
    assert torch.equal(rank0, single["rng_state"])  # the same draws as one process with 8 patches a step
    assert not torch.equal(rank0, rank1)
    # ...and rank 1's other patches did count: the averaged gradients differ from rank 0's alone.
    assert any(not torch.equal(v, single["model_state"][k]) for k, v in last["model_state"].items())


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, sim, spec_file, straight):
    """2 epochs, then --resume to EPOCHS: the weights of the straight 2-process run."""
    run = tmp_path / "resumed"
    first = torchrun(spec_file, "--data", sim["noisy"][0], "--out", run, "--epochs", 2, "--quiet")
    assert first.returncode == 0, first.stderr
    assert [r["epoch"] for r in read_metrics(run / "metrics.csv")] == [1, 2]
    second = torchrun(spec_file, "--data", sim["noisy"][0], "--out", run, "--resume", "--epochs", EPOCHS, "--quiet")
    assert second.returncode == 0, second.stderr
    rows = read_metrics(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    assert rows[-1]["step"] == EPOCHS * STEPS
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["global_step"] == EPOCHS * STEPS
    expected = weights(straight[0])
    got = weights(run)
    # gloo sums the two ranks' gradients in a fixed order: bit-identical, not just close.
    assert all(torch.equal(got[k], v) for k, v in expected.items())


def test_batch_not_divisible_fails_before_connecting(tmp_path, sim, spec_file):
    """What every torchrun worker does with an odd batch: exit 2, one line, nothing created, no rendezvous."""
    run = tmp_path / "run"
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ai4life_kit", "train", str(spec_file), "--data", str(sim["noisy"][0])]
    cmd += ["--out", str(run), "--device", "cpu", "--batch-size", "15"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: training.batch_size=15 cannot be split evenly over 2 processes: use a multiple of 2"
    ]
    assert not run.exists()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--batch-size", 15, "Error: training.batch_size=15 cannot be split evenly over 2 processes"),
        # found while loading the data, after the processes have connected: still no hang
        ("--patch-size", "256,256", "is too small for patches of (256, 256)"),
    ],
    ids=["batch", "data"],
)
def test_user_error_stops_every_rank(tmp_path, sim, spec_file, option, value, message):
    run = tmp_path / "run"
    result = torchrun(spec_file, "--data", sim["noisy"][0], "--out", run, option, value, "--quiet", timeout=120)
    assert result.returncode != 0  # torchrun's own code for a failed worker (each worker exited with 2)
    error_lines = [line for line in result.stderr.splitlines() if message in line]
    assert len(error_lines) == 2, result.stderr  # one line from each rank
    assert "ai4life_kit/" not in result.stderr  # no traceback from our code (torchrun prints its own)
    assert not run.exists()


def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = DistContext(torch.device("cpu"))
    t = torch.tensor(1.5)
    assert (dist.rank, dist.world_size, dist.is_main, dist.distributed) == (0, 1, True, False)
    assert dist.all_reduce_mean(t) is t
    assert dist.broadcast_object({"a": 1}) == {"a": 1}
    assert dist.all_gather_object(3) == [3]
    model = torch.nn.Linear(2, 2)
    assert dist.wrap(model) is model
    dist.barrier()
    calls = []
    dist.run_on_main(calls.append, 1)
    assert calls == [1]
    with pytest.raises(ConfigError, match="batch_size=15 cannot be split evenly over 2 processes"):
        local_batch_size(15, 2)
    assert local_batch_size(16, 2) == 8 and local_batch_size(15, 1) == 15
    with DistContext.from_env(torch.device("cpu")) as ctx:  # not launched by torchrun
        assert ctx.world_size == 1


def test_resume_with_another_process_count_reseeds_per_rank():
    """No saved stream for every rank: a deterministic one per (seed + rank, epoch); old checkpoints restore."""
    saved = [torch.Generator().manual_seed(s).get_state() for s in (5, 6)]
    two_procs = {"rng_state": saved[0], "rng_states": saved, "world_size": 2, "epoch": 3}
    gen = torch.Generator()
    _restore_rng(gen, two_procs, DistContext(torch.device("cpu")), seed=42)
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(_rank_seed(42, 0, 3)).get_state())
    assert len({_rank_seed(42, r, e) for r in range(3) for e in range(3)}) == 9
    old_single = {"rng_state": saved[1], "epoch": 3}  # written before multi-process training existed
    _restore_rng(gen, old_single, DistContext(torch.device("cpu")), seed=42)
    assert torch.equal(gen.get_state(), saved[1])
    assert _rank_seed(-1, 0, 0) == _rank_seed(-1, 0, 0) >= 0  # negative seeds are fine too
