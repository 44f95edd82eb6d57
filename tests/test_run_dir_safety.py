"""Run directories are safe to reuse: --overwrite deletes only what the kit wrote, --resume continues the
same run or refuses, and two trainings never write into one run directory at the same time."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import yaml

from ai4life_kit.config import save_spec
from ai4life_kit.simulate import simulate_dataset
from kit_helpers import invoke, run_cli, small_spec

MARKER = "ai4life-kit-run.json"
LOCK = ".ai4life-kit.lock"
# One core per process: the machine running the tests is shared.
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny_spec(**overrides):
    """Seconds per training: a width-8 U-Net, 2 steps of 4 patches an epoch."""
    base = {
        "model__width": 8,
        "training__epochs": 1,
        "training__steps_per_epoch": 2,
        "training__batch_size": 4,
        "training__val_patches": 4,
    }
    return small_spec("n2v2", **{**base, **overrides})


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_dataset(tmp_path_factory.mktemp("safety") / "sim", shape=(64, 64), n=2, peak=20.0, seed=11)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "n2v2.yaml"
    save_spec(tiny_spec(), path)
    return path


class Outcome(NamedTuple):
    returncode: int
    stderr: str


def train_cli(spec_file, data, out, *extra) -> Outcome:
    """``ai4life-kit train`` in this process (no interpreter and torch start-up per call)."""
    result = invoke("train", spec_file, "--data", data, "--out", out, "--device", "cpu", "-q", *extra)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Outcome(result.exit_code, result.stderr)


def train_process(spec_file, data, out, *extra) -> subprocess.CompletedProcess:
    """``ai4life-kit train`` as a process of its own (another pid: what a second user starts)."""
    return run_cli("train", spec_file, "--data", data, "--out", out, "--device", "cpu", "-q", *extra, env=ONE_THREAD)


def expect_user_error(result, *fragments):
    """Exit 2, one line on stderr, no traceback, every fragment in it; returns the line."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """``relative path -> bytes`` of every file below ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def run(tmp_path, sim, spec_file):
    """A finished one-epoch run directory of ``sim['noisy'][0]``."""
    out = tmp_path / "run"
    result = train_cli(spec_file, sim["noisy"][0], out)
    assert result.returncode == 0, result.stderr
    return out


# ---------------------------------------------------------------------------------------------
# 1. --overwrite deletes only what the kit wrote
# ---------------------------------------------------------------------------------------------
def test_new_run_dir_is_marked_and_unlocked(run, sim):
    marker = json.loads((run / MARKER).read_text())
    assert marker["created_by"] == "ai4life-kit"
    assert marker["files"] == [str(sim["noisy"][0].resolve())]
    assert not (run / LOCK).exists()  # the lock lives only as long as the training


def test_overwrite_keeps_data_and_notes_inside_the_old_run(run, sim, spec_file):
    """The issue's case: ``--data R/mydata --out R --overwrite`` exited 0 and R/mydata was gone."""
    mydata = run / "mydata"
    mydata.mkdir()
    for path in sim["noisy"]:
        shutil.copy(path, mydata / path.name)
    (run / "notes.txt").write_text("precious")
    before = snapshot(mydata)
    result = train_process(spec_file, mydata, run, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert snapshot(mydata) == before
    assert (run / "notes.txt").read_text() == "precious"
    assert (run / "checkpoints" / "best.pt").is_file()
    assert json.loads((run / "training_summary.json").read_text())["files"] == [
        str((mydata / p.name).resolve()) for p in sim["noisy"]
    ]
    said = [line for line in result.stderr.splitlines() if "deleted" in line]
    assert len(said) == 1, result.stderr
    for name in ("spec.yaml", "normalization.json", "checkpoints/", "metrics.csv", "training_summary.json", MARKER):
        assert name in said[0], said[0]
    assert "mydata" in said[0] and "notes.txt" in said[0]  # named as kept


def test_overwrite_refuses_to_delete_an_input(run, sim, spec_file):
    """An input inside a folder the kit would delete (checkpoints/) stops the run; nothing is touched."""
    inside = run / "checkpoints" / "extra.tif"
    shutil.copy(sim["noisy"][1], inside)
    before = snapshot(run)
    line = expect_user_error(train_cli(spec_file, inside, run, "--overwrite"), "checkpoints", "extra.tif")
    assert "--overwrite" in line
    assert snapshot(run) == before


def test_a_folder_with_just_checkpoints_is_not_ours(tmp_path, sim, spec_file):
    """A PyTorch Lightning run (checkpoints/ and nothing of ours) must not be deleted by --overwrite."""
    lightning = tmp_path / "lightning_logs"
    (lightning / "checkpoints").mkdir(parents=True)
    (lightning / "checkpoints" / "epoch=3-step=400.ckpt").write_bytes(b"weights of a week")
    (lightning / "hparams.yaml").write_text("lr: 0.001\n")
    before = snapshot(lightning)
    for extra in (["--overwrite"], ["--resume"]):
        expect_user_error(train_cli(spec_file, sim["noisy"][0], lightning, *extra), "not")
        assert snapshot(lightning) == before


def test_overwrite_replaces_a_run_of_an_older_version(run, sim, spec_file):
    """No marker (older versions wrote none), but spec.yaml and a kit checkpoint: still replaceable."""
    (run / MARKER).unlink(missing_ok=True)  # missing_ok: the same test runs against the code before the marker
    result = train_cli(spec_file, sim["noisy"][1], run, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert (run / MARKER).is_file()
    assert json.loads((run / "training_summary.json").read_text())["files"] == [str(sim["noisy"][1].resolve())]


def test_spec_and_a_foreign_checkpoint_are_not_ours(run, sim, spec_file):
    """spec.yaml plus a checkpoints/last.pt that is not an ai4life-kit checkpoint: refused."""
    (run / MARKER).unlink(missing_ok=True)  # missing_ok: the same test runs against the code before the marker
    (run / "checkpoints" / "best.pt").unlink()
    (run / "checkpoints" / "last.pt").write_bytes(b"somebody else's weights")
    before = snapshot(run)
    expect_user_error(train_cli(spec_file, sim["noisy"][0], run, "--overwrite"), "not created by ai4life-kit")
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------
# 3. --resume continues the same run, or refuses
# ---------------------------------------------------------------------------------------------
def test_resume_writes_longer_training_to_spec(run, sim, spec_file):
    result = train_cli(spec_file, sim["noisy"][0], run, "--resume", "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((run / "spec.yaml").read_text())["training"]["epochs"] == 2
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2


def test_resume_with_the_runs_own_spec(run, sim, tmp_path):
    """``train R/spec.yaml ... --resume`` continues the run as it was recorded."""
    own = tmp_path / "own.yaml"
    shutil.copy(run / "spec.yaml", own)
    result = train_cli(own, sim["noisy"][0], run, "--resume", "--epochs", "2")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--data", "OTHER"], ["--data", "img_001.tif", "img_000.tif"]),
        (["--batch-size", "8"], ["training.batch_size 8 (run: 4)"]),
        (["--patch-size", "16,16"], ["data.patch_size [16, 16] (run: [32, 32])"]),
        (["--seed", "7"], ["training.seed 7 (run: 42)"]),
        (["--val-fraction", "0.5"], ["data.val_fraction 0.5 (run: 0.1)"]),
        (["SPEC"], ["model.width 16 (run: 8)"]),
    ],
    ids=["other-data", "batch", "patch", "seed", "val-fraction", "other-spec"],
)
def test_resume_refuses_another_run(run, sim, spec_file, tmp_path, extra, fragments):
    """Other data, another recipe: exit 2 naming what differs; the run directory stays as it was."""
    spec = spec_file
    data = sim["noisy"][0]
    if extra == ["--data", "OTHER"]:
        data, extra = sim["noisy"][1], []
    if extra == ["SPEC"]:
        spec, extra = tmp_path / "wider.yaml", []
        save_spec(tiny_spec(model__width=16), spec)
    before = snapshot(run)
    expect_user_error(train_cli(spec, data, run, "--resume", "--epochs", "2", *extra), "--resume", *fragments)
    assert snapshot(run) == before  # summary, spec, checkpoints and metrics untouched


def test_resume_cannot_go_below_the_epochs_trained(run, sim, spec_file):
    assert train_cli(spec_file, sim["noisy"][0], run, "--resume", "--epochs", "2").returncode == 0
    before = snapshot(run)
    expect_user_error(train_cli(spec_file, sim["noisy"][0], run, "--resume", "--epochs", "1"), "2 epochs")
    assert snapshot(run) == before


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ('{"mean": [1.0], "std": [0.0], "target_mean": [1.0], "target_std": [1.0]}', "positive"),
        ('{"mean": [1.0], "std": [-2.0], "target_mean": [1.0], "target_std": [1.0]}', "positive"),
        ('{"mean": [1.0], "std": [NaN], "target_mean": [1.0], "target_std": [1.0]}', "NaN"),
        ('{"std": [1.0], "target_mean": [1.0], "target_std": [1.0]}', "'mean' must be a list of numbers"),
    ],
    ids=["garbage", "std0", "negative", "nan", "missing"],
)
def test_resume_validates_normalization(run, sim, spec_file, text, fragment):
    (run / "normalization.json").write_text(text)
    result = train_cli(spec_file, sim["noisy"][0], run, "--resume", "--epochs", "2")
    expect_user_error(result, "normalization.json", fragment)


# ---------------------------------------------------------------------------------------------
# 4. One training at a time per run directory
# ---------------------------------------------------------------------------------------------
def _start_long_training(spec_file: Path, data: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ai4life_kit", "train", str(spec_file), "--data", str(data), "--out", str(out)]
    cmd += ["--device", "cpu", "-q", "--epochs", "100000"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD)


def _wait_for_epochs(out: Path, proc: subprocess.Popen, n: int) -> None:
    deadline = time.time() + 180
    metrics = out / "metrics.csv"
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().strip().splitlines()) > n:
            return
        assert proc.poll() is None, "the training stopped early"
        time.sleep(0.05)
    pytest.fail(f"the training did not finish {n} epochs in time")


def test_a_second_training_on_a_busy_run_dir_fails_at_once(tmp_path, sim, spec_file):
    """Two trainings on one directory: the second stops with the holder's pid and host; a kill frees it."""
    out = tmp_path / "busy"
    proc = _start_long_training(spec_file, sim["noisy"][0], out)
    try:
        _wait_for_epochs(out, proc, 1)
        for extra in (["--resume", "--epochs", "100000"], ["--overwrite"]):
            t0 = time.perf_counter()
            result = train_process(spec_file, sim["noisy"][0], out, *extra)
            line = expect_user_error(result, f"pid {proc.pid}", socket.gethostname())
            assert "in use" in line
            assert time.perf_counter() - t0 < 60
            assert proc.poll() is None  # the first run goes on
        assert (out / "checkpoints" / "best.pt").is_file()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (out / LOCK).is_file()  # left by the killed process...
    done = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"]
    result = train_cli(spec_file, sim["noisy"][0], out, "--resume", "--epochs", str(done + 1))
    assert result.returncode == 0, result.stderr  # ...but the kernel released its lock
    assert not (out / LOCK).exists()


def test_lock_names_its_holder_and_goes_away(tmp_path):
    from ai4life_kit.errors import UserInputError
    from ai4life_kit.fileio import DirLock

    first, second = DirLock(tmp_path / LOCK), DirLock(tmp_path / LOCK)
    first.acquire()
    first.acquire()  # taking a held lock again is a no-op
    with pytest.raises(UserInputError, match=rf"in use .*pid {os.getpid()} on {socket.gethostname()}"):
        second.acquire()
    first.release()
    assert not (tmp_path / LOCK).exists()
    with second:
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK).exists()


@pytest.mark.slow
def test_torchrun_ranks_stop_together_on_a_busy_run_dir(run, sim, spec_file):
    """Under torchrun rank 0 alone takes the lock; when it is held every rank stops with the one line."""
    from ai4life_kit.fileio import DirLock

    before = snapshot(run)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    cmd += ["-m", "ai4life_kit", "train", str(spec_file), "--data", str(sim["noisy"][0]), "--out", str(run)]
    cmd += ["--device", "cpu", "-q", "--resume", "--epochs", "2"]
    with DirLock(run / LOCK):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=ONE_THREAD)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if f"pid {os.getpid()}" in line]
    assert len(errors) == 2, result.stderr  # one line from each rank, no hang
    assert "ai4life_kit/" not in result.stderr
    assert snapshot(run) == before
    # ...and with the lock free, the two ranks train under rank 0's lock and leave none behind.
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert not (run / LOCK).exists()
