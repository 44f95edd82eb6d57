"""The train/predict/demo commands as a user runs them: exit codes, one-line errors, files."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from ai4life_kit.config import save_spec
from ai4life_kit.data.tiff_io import read_image
from ai4life_kit.metrics import psnr
from ai4life_kit.prediction import Predictor
from ai4life_kit.simulate import simulate_dataset
from kit_helpers import invoke, run_cli, small_spec


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return simulate_dataset(root / "sim", shape=(96, 96), n=2, peak=20.0, pairs=True, seed=5)


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "n2v2.yaml"
    save_spec(small_spec("n2v2", training__epochs=2, training__steps_per_epoch=4), path)
    return path


@pytest.fixture(scope="module")
def care_spec_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "care.yaml"
    save_spec(small_spec("care", training__epochs=1, training__steps_per_epoch=3), path)
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, sim, spec_file):
    run = tmp_path_factory.mktemp("runs") / "run"
    result = invoke("train", spec_file, "--data", sim["noisy"][0].parent, "--out", run, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    return run


def test_help_is_fast_and_lists_commands():
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "ai4life_kit", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    assert result.returncode == 0
    for command in ("train", "predict", "simulate", "demo", "package", "validate", "evaluate", "challenge"):
        assert command in result.stdout
    assert elapsed < 2.0  # includes interpreter start-up; the budget for the CLI itself is 0.5 s
    code = "import sys, ai4life_kit.cli.app; print(sorted(m for m in ('torch', 'bioimageio.core') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["train", "predict", "simulate", "demo", "evaluate", "package", "validate"])
def test_every_command_has_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Usage" in result.output


def test_train_writes_a_complete_run_dir(trained_run):
    for name in (
        "spec.yaml",
        "normalization.json",
        "metrics.csv",
        "loss.png",
        "training_summary.json",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
    ):
        assert (trained_run / name).is_file(), name


def test_predict_keeps_shape_and_improves(trained_run, sim, tmp_path):
    out = tmp_path / "den"
    result = invoke("predict", trained_run, *sim["noisy"], "--out", out, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    for noisy_path, gt_path in zip(sim["noisy"], sim["gt"], strict=True):
        den = read_image(out / noisy_path.name)
        noisy = read_image(noisy_path)
        assert den.data.shape == noisy.data.shape and den.axes == noisy.axes
        with tifffile.TiffFile(out / noisy_path.name) as tif:
            assert tif.pages[0].dtype == np.float32
        gt = read_image(gt_path).data
        assert psnr(gt, den.data) > psnr(gt, noisy.data)
    # tiled with a small tile gives the same result
    out2 = tmp_path / "den_tiled"
    assert invoke("predict", trained_run, sim["noisy"][0], "--out", out2, "--tile", "96,96", "-q").exit_code == 0
    np.testing.assert_allclose(
        read_image(out2 / sim["noisy"][0].name).data, read_image(out / sim["noisy"][0].name).data, rtol=1e-4, atol=1e-2
    )
    # --border mirror (bioimage.io's blockwise border) changes only pixels within the halo of the edge
    out3 = tmp_path / "den_mirror"
    assert invoke("predict", trained_run, sim["noisy"][0], "--out", out3, "--border", "mirror", "-q").exit_code == 0
    mirrored, plain = (read_image(o / sim["noisy"][0].name).data for o in (out3, out))
    halo = Predictor.from_run_dir(trained_run, "cpu").halo
    inner = (Ellipsis, *(slice(halo, n - halo) for n in plain.shape[-2:]))
    np.testing.assert_allclose(mirrored[inner], plain[inner], rtol=1e-4, atol=1e-2)
    assert np.abs(mirrored - plain).max() > 1e-3  # the borders do differ
    # --engine onnx: the same prediction through ONNX Runtime
    out4 = tmp_path / "den_onnx"
    assert invoke("predict", trained_run, sim["noisy"][0], "--out", out4, "--engine", "onnx", "-q").exit_code == 0
    np.testing.assert_allclose(read_image(out4 / sim["noisy"][0].name).data, plain, rtol=1e-4, atol=1e-2)
    # existing outputs are not overwritten without --overwrite
    again = run_cli("predict", trained_run, sim["noisy"][0], "--out", out)
    assert again.returncode == 2 and "already exists" in again.stderr


def _expect_user_error(args, fragment, cwd=None):
    result = run_cli(*args, cwd=cwd)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]
    return result


def test_train_bad_inputs(tmp_path, sim, spec_file, care_spec_file):
    run = tmp_path / "run"
    base = ["train", spec_file, "--out", run, "--device", "cpu", "-q"]
    _expect_user_error([*base, "--data", tmp_path / "missing.tif"], "does not exist")
    (tmp_path / "empty").mkdir()
    _expect_user_error([*base, "--data", tmp_path / "empty"], "contains no .tif")
    (tmp_path / "corrupt.tif").write_bytes(b"II*\x00garbage")
    _expect_user_error([*base, "--data", tmp_path / "corrupt.tif"], "not a readable TIFF")
    (tmp_path / "notes.txt").write_text("hello")
    _expect_user_error([*base, "--data", tmp_path / "notes.txt"], "not a readable TIFF")
    _expect_user_error([*base, "--data", sim["noisy"][0], "--axes", "ZYX"], "3 letters")
    nan = np.random.default_rng(0).random((96, 96)).astype(np.float32)
    nan[5, 5] = np.inf
    tifffile.imwrite(tmp_path / "inf.tif", nan)
    _expect_user_error([*base, "--data", tmp_path / "inf.tif"], "NaN or Inf")
    tifffile.imwrite(tmp_path / "flat.tif", np.full((96, 96), 7, np.uint16))
    _expect_user_error([*base, "--data", tmp_path / "flat.tif"], "constant")
    tifffile.imwrite(tmp_path / "tiny.tif", np.random.default_rng(0).random((20, 20)).astype(np.float32))
    _expect_user_error([*base, "--data", tmp_path / "tiny.tif", "--val-fraction", "0"], "smaller than the patch")
    care = ["train", care_spec_file, "--out", run, "-q", "--data", sim["noisy"][0].parent]
    _expect_user_error([*care, "--target", sim["gt"][0]], "must pair up")
    tifffile.imwrite(tmp_path / "gt_small.tif", np.ones((90, 96), np.float32))
    _expect_user_error(
        ["train", care_spec_file, "--out", run, "-q", "--data", sim["noisy"][0], "--target", tmp_path / "gt_small.tif"],
        "has shape",
    )
    _expect_user_error(["train", care_spec_file, "--out", run, "-q", "--data", sim["noisy"][0]], "needs --target")
    typo = tmp_path / "typo.yaml"
    typo.write_text(spec_file.read_text().replace("steps_per_epoch", "steps_per_epoc"))
    _expect_user_error(["train", typo, "--data", sim["noisy"][0], "--out", run], "steps_per_epoc")
    _expect_user_error([*base, "--data", sim["noisy"][0], "--patch-size", "30,30"], "multiple of 2**model.depth")
    _expect_user_error(
        [*base, "--data", sim["noisy"][0], "--device", "cuda"]
        if not _cuda()
        else [*base, "--data", sim["noisy"][0], "--device", "tpu"],
        "--device",
    )
    assert not run.exists()  # nothing half-written by any rejected call


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_train_refuses_existing_run_dir(trained_run, sim, spec_file):
    before = (trained_run / "checkpoints" / "best.pt").read_bytes()
    _expect_user_error(["train", spec_file, "--data", sim["noisy"][0], "--out", trained_run], "already exists")
    assert (trained_run / "checkpoints" / "best.pt").read_bytes() == before


def test_overwrite_refuses_foreign_folder(tmp_path, sim, spec_file):
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.docx").write_text("precious")
    _expect_user_error(
        ["train", spec_file, "--data", sim["noisy"][0], "--out", foreign, "--overwrite"], "not created by ai4life-kit"
    )
    assert (foreign / "chapter1.docx").read_text() == "precious"


def test_unquoted_glob_expansion_is_accepted(tmp_path, sim, spec_file):
    result = invoke(
        "train",
        spec_file,
        "--data",
        *sim["noisy"],
        "--out",
        tmp_path / "run",
        "-q",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "1",
    )
    assert result.exit_code == 0, result.output
    summary = (tmp_path / "run" / "training_summary.json").read_text()
    assert sim["noisy"][1].name in summary


def test_predict_bad_inputs(tmp_path, trained_run, sim):
    out = tmp_path / "o"
    _expect_user_error(["predict", tmp_path / "nope", sim["noisy"][0], "--out", out], "does not exist")
    (tmp_path / "half").mkdir()
    _expect_user_error(["predict", tmp_path / "half", sim["noisy"][0], "--out", out], "not an ai4life-kit run")
    (tmp_path / "model.zip").write_bytes(b"PK\x03\x04broken")
    _expect_user_error(["predict", tmp_path / "model.zip", sim["noisy"][0], "--out", out], "")
    _expect_user_error(["predict", trained_run, sim["noisy"][0], "--out", out, "--tile", "16,16"], "halo")
    _expect_user_error(["predict", trained_run, sim["noisy"][0], "--out", out, "--tile", "a,b"], "--tile")
    _expect_user_error(["predict", trained_run, sim["noisy"][0], "--out", out, "--border", "zero"], "--border")
    _expect_user_error(["predict", trained_run, sim["noisy"][0], "--out", out, "--engine", "tvm"], "--engine")
    _expect_user_error(["predict", trained_run, tmp_path / "x.tif", "--out", out], "does not exist")
    two = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    tifffile.imwrite(tmp_path / "two.tif", two)
    _expect_user_error(["predict", trained_run, tmp_path / "two.tif", "--out", out, "--axes", "CYX"], "channel")
    assert not out.exists() or not any(out.iterdir())
