"""Probabilistic restoration: the Laplace NLL and intervals, the network head, training, prediction, the CLI."""

from __future__ import annotations

import io
import json
import math
import zipfile

import numpy as np
import pytest
import torch

from ai4life_kit.data.tiff_io import read_image, write_image
from ai4life_kit.laplace import calibration, coverage, interval_halfwidth, laplace_nll
from ai4life_kit.models.unet import SCALE_FLOOR, UNet
from ai4life_kit.prediction import Predictor
from ai4life_kit.simulate import simulate_dataset
from ai4life_kit.training import train
from kit_helpers import invoke, small_spec

# Known noise: targets are the clean image plus Laplace noise of this scale (raw intensity units).
NOISE_SCALE = 6.0


def test_laplace_nll_is_the_negative_log_density():
    rng = np.random.default_rng(0)
    mean, y = rng.normal(size=50), rng.normal(size=50)
    scale = rng.uniform(0.1, 3, size=50)
    closed_form = np.mean(-np.log(np.exp(-np.abs(y - mean) / scale) / (2 * scale)))
    got = laplace_nll(*(torch.tensor(a) for a in (mean, scale, y))).item()
    assert got == pytest.approx(closed_form, rel=1e-12)
    # at the minimiser the scale is the mean absolute deviation: |y - mu| = b gives 1 + log(2 b)
    assert laplace_nll(torch.zeros(1), torch.full((1,), 2.0), torch.full((1,), 2.0)).item() == pytest.approx(
        1 + math.log(4)
    )


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.99])
def test_central_intervals_hold_their_nominal_mass(level):
    rng = np.random.default_rng(1)
    scale = rng.uniform(0.5, 4, size=400_000)
    truth = rng.laplace(0.0, scale)
    assert coverage(truth, np.zeros_like(truth), scale, level) == pytest.approx(level, abs=0.004)
    assert interval_halfwidth(1.0, 0.5) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="between 0 and 1"):
        interval_halfwidth(1.0, 1.0)


def test_calibration_of_honest_and_of_overconfident_scales():
    rng = np.random.default_rng(2)
    scale = rng.uniform(0.2, 5, size=300_000)
    truth = rng.laplace(0.0, scale)
    honest = calibration(truth, np.zeros_like(truth), scale)
    assert honest["coverage50"] == pytest.approx(0.5, abs=0.005)
    assert honest["coverage90"] == pytest.approx(0.9, abs=0.005)
    assert honest["error_over_scale"] == pytest.approx(1.0, abs=0.01)
    assert honest["spearman"] > 0.4  # larger scales go with larger errors
    for row in honest["reliability"]:  # every bin on the diagonal
        assert row["mean_abs_error"] == pytest.approx(row["mean_b"], rel=0.03)
    assert sum(r["pixels"] for r in honest["reliability"]) == truth.size
    # half the true scale: intervals too narrow, errors twice the scale, ranks unchanged
    overconfident = calibration(truth, np.zeros_like(truth), scale / 2)
    assert overconfident["coverage50"] == pytest.approx(1 - 2**-0.5, abs=0.005)  # P(|e| <= b ln2 / 2)
    assert overconfident["error_over_scale"] == pytest.approx(2.0, abs=0.02)
    assert overconfident["spearman"] == pytest.approx(honest["spearman"])


@pytest.mark.parametrize("dims", [2, 3])
def test_probabilistic_unet_gives_means_then_positive_scales(dims):
    torch.manual_seed(0)
    net = UNet(dims=dims, in_channels=2, out_channels=2, depth=2, width=8, residual=True, probabilistic=True).eval()
    x = torch.randn((1, 2) + (16,) * dims)
    with torch.no_grad():
        y = net(x)
        net.probabilistic = False  # the same weights without the head's split: means = raw + x
    assert y.shape == (1, 4) + (16,) * dims
    assert (y[:, 2:] >= SCALE_FLOOR).all()
    # the residual goes to the means only; the scales are softplus of the raw head output
    net.probabilistic = True
    with torch.no_grad():
        raw = net.head(_features(net, x))
    torch.testing.assert_close(y[:, :2], raw[:, :2] + x)
    torch.testing.assert_close(y[:, 2:], torch.nn.functional.softplus(raw[:, 2:]) + SCALE_FLOOR)
    scripted = torch.jit.script(net)
    assert scripted.probabilistic  # how a Predictor recognises a scripted probabilistic network
    torch.testing.assert_close(scripted(x), y)


def _features(net: UNet, x: torch.Tensor) -> torch.Tensor:
    """The U-Net's last decoder output (what its 1x1 head sees)."""
    captured = {}
    handle = net.head.register_forward_hook(lambda m, inp, out: captured.setdefault("h", inp[0]))
    net(x)
    handle.remove()
    return captured["h"]


@pytest.fixture(scope="module")
def laplace_pairs(tmp_path_factory):
    """Noise2Noise pairs of simulated cells with Laplace noise of a known scale, and a held-out pair."""
    root = tmp_path_factory.mktemp("laplace")
    sim = simulate_dataset(root / "sim", shape=(128, 128), n=3, peak=200.0, read_noise=0.0, seed=5)
    rng = np.random.default_rng(5)
    files = {"a": [], "b": []}
    for i, gt_path in enumerate(sim["gt"]):
        clean = read_image(gt_path).data
        for k in files:
            path = root / k / f"img{i}.tif"
            write_image(path, clean + rng.laplace(0.0, NOISE_SCALE, clean.shape).astype(np.float32), "YX")
            files[k].append(path)
    return files


@pytest.fixture(scope="module")
def probabilistic_run(laplace_pairs, tmp_path_factory):
    spec = small_spec("n2n", 2, algorithm__loss="laplace", training__epochs=6)
    data, target = laplace_pairs["a"][:2], laplace_pairs["b"][:2]
    return train(
        spec,
        [str(p) for p in data],
        [str(p) for p in target],
        tmp_path_factory.mktemp("p") / "run",
        device="cpu",
        progress=False,
    )


@pytest.mark.slow
def test_probabilistic_n2n_learns_the_known_noise_and_is_calibrated(laplace_pairs, probabilistic_run):
    """Trained on pairs whose noise is Laplace with scale 6, the predicted scales (raw units) say so.

    Noise2Noise's Laplace fits the noise of its targets: the held-out target's pixels fall in the
    central 50 % and 90 % intervals about as often as those levels promise.
    """
    predictor = Predictor.from_run_dir(probabilistic_run, "cpu")
    noisy = read_image(laplace_pairs["a"][2]).data
    target = read_image(laplace_pairs["b"][2]).data
    mean, scale = predictor.predict_with_scale(noisy, "YX")
    assert mean.shape == scale.shape == noisy.shape and scale.dtype == np.float32
    np.testing.assert_array_equal(mean, predictor.predict(noisy, "YX"))  # predict() gives the means
    assert 0.8 * NOISE_SCALE < float(np.median(scale)) < 1.4 * NOISE_SCALE
    for level in (0.5, 0.9):
        assert coverage(target, mean, scale, level) == pytest.approx(level, abs=0.06)


@pytest.mark.slow
def test_predict_uncertainty_writes_means_scales_and_a_panel(laplace_pairs, probabilistic_run, tmp_path):
    src = laplace_pairs["a"][2]
    result = invoke("predict", probabilistic_run, src, "--out", tmp_path / "den", "--uncertainty", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    mean = read_image(tmp_path / "den" / src.name).data
    scale = read_image(tmp_path / "den" / "uncertainty" / src.name).data
    predictor = Predictor.from_run_dir(probabilistic_run, "cpu")
    ref_mean, ref_scale = predictor.predict_with_scale(read_image(src).data, "YX")
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-5, atol=1e-4)
    panel = tmp_path / "den" / "uncertainty" / f"{src.stem}.png"
    assert panel.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and panel.stat().st_size > 10_000
    assert sorted(p.name for p in (tmp_path / "den").glob("*.tif")) == [src.name]  # means alone at the top


def test_uncertainty_needs_a_probabilistic_model(tmp_path):
    spec = small_spec("care", 2, training__epochs=1, training__steps_per_epoch=2)
    sim = simulate_dataset(tmp_path / "sim", shape=(64, 64), n=1, seed=1)
    run = train(spec, [str(sim["noisy"][0])], [str(sim["gt"][0])], tmp_path / "run", device="cpu", progress=False)
    result = invoke("predict", run, sim["noisy"][0], "--out", tmp_path / "den", "--uncertainty", "-q")
    assert result.exit_code == 2
    assert "predicts no uncertainty" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "den").exists()
    with pytest.raises(Exception, match="predicts no uncertainty"):
        Predictor.from_run_dir(run, "cpu").predict_with_scale(read_image(sim["noisy"][0]).data, "YX")
    result = invoke("predict", run, sim["noisy"][0], "--out", tmp_path / "d2", "--uncertainty", "--out-of-core")
    assert result.exit_code == 2 and "predicts in memory" in result.stderr


@pytest.mark.slow
def test_a_probabilistic_package_carries_means_and_scales_as_named_channels(laplace_pairs, probabilistic_run, tmp_path):
    """One output tensor, channels ``mean`` and ``scale``; the zip predicts both as the run directory does."""
    import yaml

    out = tmp_path / "p.bioimageio.zip"
    result = invoke("package", probabilistic_run, "--out", out, "--author", "A. Tester")
    assert result.exit_code == 0, result.stdout + result.stderr
    with zipfile.ZipFile(out) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        readme = zf.read("README.md").decode()
        test_output = np.load(io.BytesIO(zf.read(rdf["outputs"][0]["test_tensor"]["source"])))
    assert len(rdf["inputs"]) == len(rdf["outputs"]) == 1
    channel = next(a for a in rdf["outputs"][0]["axes"] if a["type"] == "channel")
    assert channel["channel_names"] == ["mean", "scale"] and test_output.shape[1] == 2
    post = rdf["outputs"][0]["postprocessing"][0]["kwargs"]
    norm = json.loads((probabilistic_run / "normalization.json").read_text())
    assert post["gain"] == pytest.approx(norm["target_std"] * 2)
    assert post["offset"] == pytest.approx([norm["target_mean"][0], 0.0])  # a scale is a width: no offset
    assert (test_output[:, 1] > 0).all()
    assert "Output channels: mean and uncertainty" in readme and "quantification" in readme
    image = read_image(laplace_pairs["a"][2]).data
    ref_mean, ref_scale = Predictor.from_run_dir(probabilistic_run, "cpu").predict_with_scale(image, "YX")
    for weights in ("pytorch_state_dict", "torchscript"):
        from_zip = Predictor.from_bioimageio(out, "cpu", weights=weights)
        assert from_zip.probabilistic and from_zip.n_outputs == 2
        mean, scale = from_zip.predict_with_scale(image, "YX")
        np.testing.assert_allclose(mean, ref_mean, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(scale, ref_scale, rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(from_zip.predict(image, "YX"), mean)  # the challenge path: means only
    from ai4life_kit.challenge.runner import denoise, load_models

    stack = np.stack([image, image])  # the challenge's S x Y x X stacks: its container writes the means only
    np.testing.assert_allclose(denoise(load_models([out]), stack, "SYX"), np.stack([ref_mean, ref_mean]), atol=1e-3)
    den = tmp_path / "den"
    assert invoke("predict", out, laplace_pairs["a"][2], "--out", den, "--uncertainty", "-q").exit_code == 0
    np.testing.assert_allclose(read_image(den / "uncertainty" / laplace_pairs["a"][2].name).data, ref_scale, atol=1e-3)


@pytest.mark.slow
def test_evaluate_uncertainty_reports_calibration_and_plots_it(laplace_pairs, probabilistic_run, tmp_path):
    src, truth = laplace_pairs["a"][2], laplace_pairs["b"][2]
    den = tmp_path / "den"
    assert invoke("predict", probabilistic_run, src, "--out", den, "--uncertainty", "-q").exit_code == 0
    result = invoke("evaluate", den, "--gt", truth.parent, "--uncertainty", "--json", tmp_path / "s.json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "coverage 50 %" in result.stdout
    scores = json.loads((tmp_path / "s.json").read_text())["uncertainty"]
    mean, scale = Predictor.from_run_dir(probabilistic_run, "cpu").predict_with_scale(read_image(src).data, "YX")
    expected = calibration(read_image(truth).data, mean, scale)
    assert scores["pooled"]["coverage90"] == pytest.approx(expected["coverage90"], abs=1e-3)
    assert scores["pooled"]["coverage50"] == pytest.approx(0.5, abs=0.06)
    plot = den / "uncertainty" / "reliability.png"
    assert plot.read_bytes()[:4] == b"\x89PNG"
    again = invoke("evaluate", den, "--gt", truth.parent, "--uncertainty")
    assert again.exit_code == 2 and "already exists" in again.stderr  # the plot is not overwritten silently
    (den / "uncertainty" / src.name).unlink()
    missing = invoke("evaluate", den, "--gt", truth.parent, "--uncertainty", "--overwrite")
    assert missing.exit_code == 2 and "no uncertainty map" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_a_probabilistic_model_predicts_its_means_on_every_path(laplace_pairs, probabilistic_run, tmp_path):
    """Without --uncertainty: in memory, out of core and through ONNX Runtime, the same means."""
    src = laplace_pairs["a"][2]
    means = Predictor.from_run_dir(probabilistic_run, "cpu").predict(read_image(src).data, "YX")
    for extra in (["--in-memory"], ["--out-of-core"], ["--engine", "onnx"]):
        out = tmp_path / extra[-1].strip("-")
        result = invoke("predict", probabilistic_run, src, "--out", out, "-q", *extra)
        assert result.exit_code == 0, (extra, result.stdout + result.stderr)
        np.testing.assert_allclose(read_image(out / src.name).data, means, rtol=1e-5, atol=1e-3, err_msg=str(extra))
        assert not (out / "uncertainty").exists()


# -- per-level calibration on the validation split -------------------------------------------------


def test_interval_factors_are_one_for_laplace_errors_and_the_normal_ratio_for_normal_ones():
    from statistics import NormalDist

    from ai4life_kit.training.calibration import fit_interval_factors

    rng = np.random.default_rng(3)
    b = rng.uniform(0.5, 3.0, 400_000)
    lap = fit_interval_factors(np.abs(rng.laplace(0.0, b)) / b)
    np.testing.assert_allclose(lap["factors"], 1.0, atol=0.02)
    np.testing.assert_allclose(lap["coverage_uncalibrated"], lap["levels"], atol=0.005)
    assert lap["mle_factor"] == pytest.approx(1.0, abs=0.01)
    # normal errors with the same mean |error|: sigma = b sqrt(pi / 2)
    normal = fit_interval_factors(np.abs(rng.normal(0.0, b * math.sqrt(math.pi / 2))) / b)
    for p, s in zip(normal["levels"], normal["factors"], strict=True):
        z = NormalDist().inv_cdf((1 + p) / 2)
        assert s == pytest.approx(z * math.sqrt(math.pi / 2) / math.log(1 / (1 - p)), rel=0.02)
    with pytest.raises(ValueError, match="finite"):
        fit_interval_factors(np.array([1.0, np.nan]))


@pytest.mark.slow
def test_training_calibrates_the_intervals_and_evaluate_scores_them(laplace_pairs, probabilistic_run, tmp_path):
    from ai4life_kit.rundir import RUN_ENTRIES
    from ai4life_kit.training.calibration import read_calibration

    cal = read_calibration(probabilistic_run)
    assert cal["levels"] == [0.5, 0.8, 0.9, 0.95] and cal["pixels"] > 1000
    assert "uncertainty_calibration.json" in RUN_ENTRIES  # --overwrite deletes it with the run
    src, truth = laplace_pairs["a"][2], laplace_pairs["b"][2]
    den = tmp_path / "den"
    assert invoke("predict", probabilistic_run, src, "--out", den, "--uncertainty", "-q").exit_code == 0
    args = ["evaluate", den, "--gt", truth.parent, "--uncertainty", "--json", tmp_path / "s.json"]
    result = invoke(*args, "--calibration", probabilistic_run)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "Uncertainty" in result.stdout  # the table (its columns wrap in an 80-column terminal)
    pooled = json.loads((tmp_path / "s.json").read_text())["uncertainty"]["pooled"]
    mean, scale = read_image(den / src.name).data, read_image(den / "uncertainty" / src.name).data
    factors = dict(zip(cal["levels"], cal["factors"], strict=True))
    for level in (0.5, 0.9):
        expected = coverage(read_image(truth).data, mean, factors[level] * scale, level)
        assert pooled[f"coverage{round(level * 100)}_calibrated"] == pytest.approx(expected, abs=1e-9)
        assert expected == pytest.approx(level, abs=0.05)  # held-out image, known Laplace noise
    wrong = invoke("evaluate", den, "--gt", truth.parent, "--calibration", probabilistic_run)
    assert wrong.exit_code == 2 and "add --uncertainty" in wrong.stderr
    none = invoke("evaluate", den, "--gt", truth.parent, "--uncertainty", "--overwrite", "--calibration", tmp_path)
    assert none.exit_code == 2 and "no uncertainty_calibration.json" in none.stderr
