"""End-to-end tests of ``ai4life-kit simulate`` and ``ai4life-kit evaluate`` through the Typer app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from typer.testing import CliRunner

from ai4life_kit.cli.app import app
from ai4life_kit.data.tiff_io import read_image, write_image
from ai4life_kit.metrics import evaluate_image
from ai4life_kit.simulate import simulate_dataset

runner = CliRunner()


def _run(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def sim(tmp_path: Path) -> dict:
    """Three small 2D noisy/gt pairs on disk."""
    return simulate_dataset(tmp_path / "sim", shape=(64, 72), n=3, seed=11)


def _tif_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.tif"))}


# ---------------------------------------------------------------------------------------------
# simulate
# ---------------------------------------------------------------------------------------------
def test_simulate_writes_files_and_reports_psnr(tmp_path):
    out = tmp_path / "data"
    res = _run("simulate", out, "--shape", "48,64", "--n", "2", "--pairs", "--seed", "3")
    assert res.exit_code == 0, res.output
    assert "Wrote 6 images" in res.stdout
    assert "Input PSNR" in res.stdout and "dB" in res.stdout
    for folder in ("gt", "noisy", "noisy2"):
        assert sorted(p.name for p in (out / folder).iterdir()) == ["img_000.tif", "img_001.tif"]
    img = read_image(out / "noisy" / "img_001.tif")
    assert img.dtype == np.uint16 and img.axes == "YX" and img.data.shape == (48, 64)
    summary = json.loads((out / "simulation.json").read_text())
    assert summary["parameters"]["seed"] == 3
    assert f"{summary['mean_input_psnr']:.2f}" in res.stdout


def test_simulate_3d_and_structured_noise_option(tmp_path):
    res = _run("simulate", tmp_path / "d3", "--shape", "8,32,32", "--structured-noise", "ROW", "--peak", "5")
    assert res.exit_code == 0, res.output
    img = read_image(tmp_path / "d3" / "noisy" / "img_000.tif")
    assert img.axes == "ZYX" and img.data.shape == (8, 32, 32)
    params = json.loads((tmp_path / "d3" / "simulation.json").read_text())["parameters"]
    assert params["structured_noise"] == "row" and params["peak"] == 5.0


def test_simulate_seed_reproducible(tmp_path):
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert _run("simulate", tmp_path / name, "--shape", "32,32", "--seed", seed).exit_code == 0
    a, b, c = (_tif_bytes(tmp_path / x) for x in "abc")
    assert a == b
    assert a["noisy/img_000.tif"] != c["noisy/img_000.tif"]


def test_simulate_default_seed_is_42(tmp_path):
    assert _run("simulate", tmp_path / "d", "--shape", "16,16").exit_code == 0
    assert json.loads((tmp_path / "d" / "simulation.json").read_text())["parameters"]["seed"] == 42


def test_simulate_refuses_existing_folder_without_overwrite(tmp_path):
    out = tmp_path / "data"
    assert _run("simulate", out, "--shape", "16,16").exit_code == 0
    res = _run("simulate", out, "--shape", "16,16")
    assert res.exit_code == 2
    assert res.stderr.startswith("Error: ") and "--overwrite" in res.stderr
    assert res.stdout == ""
    res = _run("simulate", out, "--shape", "16,16", "--n", "2", "--overwrite")
    assert res.exit_code == 0, res.output
    assert len(list((out / "gt").iterdir())) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shape", "64;64"], "shape '64;64'"),
        (["--shape", "0,64"], "shape '0,64'"),
        (["--shape", "1,2,3,4"], "shape '1,2,3,4'"),
        (["--peak", "0"], "peak 0.0"),
        (["--peak", "-5"], "peak -5.0"),
        (["--n", "0"], "number of images 0"),
        (["--read-noise", "-1"], "read noise -1.0"),
        (["--seed", "-3"], "seed -3"),
    ],
)
def test_simulate_bad_values_one_line_exit_2(tmp_path, args, message):
    res = _run("simulate", tmp_path / "out", *args)
    assert res.exit_code == 2
    assert res.stderr == f"Error: {res.stderr.removeprefix('Error: ').strip()}\n"  # one line
    assert message in res.stderr
    assert not (tmp_path / "out").exists()


def test_simulate_unknown_structured_noise_is_a_usage_error(tmp_path):
    res = _run("simulate", tmp_path / "out", "--structured-noise", "diagonal")
    assert res.exit_code == 2
    assert "diagonal" in res.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------
def test_evaluate_prints_table_and_writes_json(sim, tmp_path):
    out_json = tmp_path / "scores" / "s.json"
    res = _run("evaluate", sim["out_dir"] / "noisy", "--gt", sim["out_dir"] / "gt", "--json", out_json)
    assert res.exit_code == 0, res.output
    for word in ("img_000", "img_001", "img_002", "mean", "PSNR", "SI-PSNR", "SSIM", "MS-SSIM"):
        assert word in res.stdout
    scores = json.loads(out_json.read_text())
    assert scores["n_images"] == 3
    assert [img["name"] for img in scores["images"]] == ["img_000", "img_001", "img_002"]
    # The PSNR of noisy vs gt is the input PSNR that simulate reported.
    for img, expected in zip(scores["images"], sim["input_psnr"], strict=True):
        assert img["mean"]["psnr"] == pytest.approx(expected, abs=1e-4)
        assert img["axes"] == "YX" and img["shape"] == [64, 72]
    assert scores["mean"]["psnr"] == pytest.approx(np.mean(sim["input_psnr"]), abs=1e-4)
    gt = read_image(sim["gt"][1]).data
    noisy = read_image(sim["noisy"][1]).data
    direct = evaluate_image(gt, noisy, "YX")["mean"]
    assert scores["images"][1]["mean"] == pytest.approx(direct)
    assert f"{scores['mean']['psnr']:.2f}" in res.stdout
    assert not list(out_json.parent.glob("*.tmp*"))


def test_evaluate_denoised_scores_higher_than_noisy(sim, tmp_path):
    den = tmp_path / "den"
    for p in sim["noisy"]:
        write_image(den / p.name, ndi.gaussian_filter(read_image(p).data, 1.0), "YX")
    gt_dir = sim["out_dir"] / "gt"
    noisy = _run("evaluate", sim["out_dir"] / "noisy", "--gt", gt_dir, "--json", tmp_path / "noisy.json")
    smooth = _run("evaluate", den, "--gt", gt_dir, "--json", tmp_path / "den.json")
    assert noisy.exit_code == 0 and smooth.exit_code == 0
    a = json.loads((tmp_path / "noisy.json").read_text())["mean"]
    b = json.loads((tmp_path / "den.json").read_text())["mean"]
    for key in ("psnr", "si_psnr", "ssim", "ms_ssim"):
        assert b[key] > a[key], key


def test_evaluate_identical_images_gives_inf_psnr_and_strict_json(sim, tmp_path):
    out_json = tmp_path / "same.json"
    res = _run("evaluate", sim["out_dir"] / "gt", "--gt", sim["out_dir"] / "gt", "--json", out_json)
    assert res.exit_code == 0, res.output
    assert "inf" in res.stdout
    text = out_json.read_text()
    assert "Infinity" not in text and "NaN" not in text
    scores = json.loads(text)
    assert scores["mean"]["psnr"] is None
    assert scores["mean"]["ssim"] == pytest.approx(1.0)


def test_evaluate_refuses_existing_json_without_overwrite(sim, tmp_path):
    out_json = tmp_path / "s.json"
    out_json.write_text("keep me")
    args = ["evaluate", sim["out_dir"] / "noisy", "--gt", sim["out_dir"] / "gt", "--json", out_json]
    res = _run(*args)
    assert res.exit_code == 2
    assert "already exists" in res.stderr
    assert out_json.read_text() == "keep me"
    assert _run(*args, "--overwrite").exit_code == 0
    assert json.loads(out_json.read_text())["n_images"] == 3


def test_evaluate_missing_gt_for_a_prediction(sim, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    for p in sim["noisy"]:
        (pred / p.name).write_bytes(p.read_bytes())
    (pred / "extra_image.tif").write_bytes(sim["noisy"][0].read_bytes())
    res = _run("evaluate", pred, "--gt", sim["out_dir"] / "gt")
    assert res.exit_code == 2
    assert "no ground truth" in res.stderr and "extra_image" in res.stderr
    assert res.stderr.count("\n") == 1


def test_evaluate_no_common_names(sim, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "other.tif").write_bytes(sim["noisy"][0].read_bytes())
    res = _run("evaluate", pred, "--gt", sim["out_dir"] / "gt")
    assert res.exit_code == 2
    assert "no file names in common" in res.stderr
    assert "other" in res.stderr and "img_000" in res.stderr


def test_evaluate_shape_mismatch_names_both_shapes(sim, tmp_path):
    pred = tmp_path / "pred"
    write_image(pred / "img_000.tif", np.zeros((64, 70), np.float32), "YX")
    res = _run("evaluate", pred, "--gt", sim["out_dir"] / "gt")
    assert res.exit_code == 2
    assert "(64, 70)" in res.stderr and "(64, 72)" in res.stderr


def test_evaluate_nan_prediction(sim, tmp_path):
    data = read_image(sim["noisy"][0]).data.copy()
    data[5, 5] = np.nan
    pred = tmp_path / "pred"
    write_image(pred / "img_000.tif", data, "YX")
    res = _run("evaluate", pred, "--gt", sim["out_dir"] / "gt")
    assert res.exit_code == 2
    assert "NaN" in res.stderr and "img_000.tif" in res.stderr


def test_evaluate_corrupt_tiff(sim, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "img_000.tif").write_bytes(b"this is not a tiff")
    res = _run("evaluate", pred, "--gt", sim["out_dir"] / "gt")
    assert res.exit_code == 2
    assert "not a readable TIFF" in res.stderr


@pytest.mark.parametrize("which", ["pred", "gt"])
def test_evaluate_empty_folder(sim, tmp_path, which):
    empty = tmp_path / "empty"
    empty.mkdir()
    pred, gt = (empty, sim["out_dir"] / "gt") if which == "pred" else (sim["out_dir"] / "noisy", empty)
    res = _run("evaluate", pred, "--gt", gt)
    assert res.exit_code == 2
    assert "contains no .tif/.tiff files" in res.stderr and str(empty) in res.stderr


def test_evaluate_missing_folder(tmp_path):
    res = _run("evaluate", tmp_path / "nope", "--gt", tmp_path)
    assert res.exit_code == 2
    assert "nope" in res.stderr and "does not exist" in res.stderr


def test_evaluate_reports_unmatched_ground_truth(sim, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "img_001.tif").write_bytes(sim["noisy"][1].read_bytes())
    out_json = tmp_path / "s.json"
    res = _run("evaluate", pred, "--gt", sim["out_dir"] / "gt", "--json", out_json)
    assert res.exit_code == 0, res.output
    assert "2 ground-truth image(s) without a prediction" in res.stderr
    scores = json.loads(out_json.read_text())
    assert scores["n_images"] == 1
    assert scores["unmatched_ground_truth"] == ["img_000", "img_002"]


def test_evaluate_per_channel(tmp_path):
    rng = np.random.default_rng(0)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for i in range(2):
        gt = rng.random((2, 40, 40)).astype(np.float32)
        gt = ndi.gaussian_filter(gt, (0, 2, 2)) * np.array([100, 1000], np.float32)[:, None, None]
        pred = gt + rng.normal(0, [[[1.0]], [[50.0]]], gt.shape).astype(np.float32)
        write_image(gt_dir / f"c{i}.tif", gt, "CYX")
        write_image(pred_dir / f"c{i}.tif", pred, "CYX")
    out_json = tmp_path / "s.json"
    res = _run("evaluate", pred_dir, "--gt", gt_dir, "--json", out_json)
    assert res.exit_code == 0, res.output
    assert "channel" in res.stdout
    scores = json.loads(out_json.read_text())
    first = scores["images"][0]
    assert first["axes"] == "CYX" and len(first["channels"]) == 2
    # Channel 1 is much noisier relative to its content: lower scores.
    assert first["channels"][0]["psnr"] > first["channels"][1]["psnr"]
    assert len(scores["mean_per_channel"]) == 2
    expected = np.mean([img["mean"]["ssim"] for img in scores["images"]])
    assert scores["mean"]["ssim"] == pytest.approx(expected)


def test_evaluate_3d_simulated_volumes(tmp_path):
    res3 = simulate_dataset(tmp_path / "vol", shape=(8, 32, 32), n=1, seed=0)
    out_json = tmp_path / "s.json"
    res = _run("evaluate", res3["out_dir"] / "noisy", "--gt", res3["out_dir"] / "gt", "--json", out_json)
    assert res.exit_code == 0, res.output
    img = json.loads(out_json.read_text())["images"][0]
    assert img["axes"] == "ZYX" and img["n_samples"] == 1
    assert img["mean"]["psnr"] == pytest.approx(res3["input_psnr"][0], abs=1e-4)


def test_evaluate_axes_override_scores_thin_stack_slice_by_slice(tmp_path):
    rng = np.random.default_rng(1)
    gt = ndi.gaussian_filter(rng.random((3, 32, 32)), (0, 2, 2)).astype(np.float32)
    pred = (gt + rng.normal(0, 0.01, gt.shape)).astype(np.float32)
    write_image(tmp_path / "gt" / "s.tif", gt, "ZYX")
    write_image(tmp_path / "pred" / "s.tif", pred, "ZYX")
    res = _run("evaluate", tmp_path / "pred", "--gt", tmp_path / "gt")
    assert res.exit_code == 2
    assert "s:" in res.stderr and "(3, 32, 32)" in res.stderr
    out_json = tmp_path / "s.json"
    res = _run("evaluate", tmp_path / "pred", "--gt", tmp_path / "gt", "--axes", "SYX", "--json", out_json)
    assert res.exit_code == 0, res.output
    assert json.loads(out_json.read_text())["images"][0]["n_samples"] == 3


def test_evaluate_axes_mismatch_between_files(tmp_path):
    data = np.random.default_rng(0).random((8, 16, 16)).astype(np.float32)
    write_image(tmp_path / "gt" / "a.tif", data, "ZYX")
    write_image(tmp_path / "pred" / "a.tif", data, "SYX")
    res = _run("evaluate", tmp_path / "pred", "--gt", tmp_path / "gt")
    assert res.exit_code == 2
    assert "'SYX'" in res.stderr and "'ZYX'" in res.stderr and "--axes" in res.stderr


def test_evaluate_uint16_tiff_without_metadata(tmp_path):
    rng = np.random.default_rng(2)
    gt = (ndi.gaussian_filter(rng.random((48, 48)), 2) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "g.tif", gt)
    (tmp_path / "gt").mkdir()
    (tmp_path / "g.tif").rename(tmp_path / "gt" / "g.tif")
    write_image(tmp_path / "pred" / "g.tif", gt.astype(np.float32) + 1, "YX")
    res = _run("evaluate", tmp_path / "pred", "--gt", tmp_path / "gt")
    assert res.exit_code == 0, res.output


def test_command_modules_import_nothing_heavy():
    code = (
        "import sys, ai4life_kit.cli.simulate, ai4life_kit.cli.evaluate; "
        "heavy = [m for m in ('numpy', 'scipy', 'tifffile', 'torch', 'rich') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
