"""Ensembles (``train --ensemble K``): members, their mean, their spread and disagreement, resume, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ai4life_kit.data.tiff_io import read_image, write_image
from ai4life_kit.errors import UserInputError
from ai4life_kit.laplace import calibration, coverage, ensemble_disagreement, ensemble_scale, interval_halfwidth
from ai4life_kit.prediction import EnsemblePredictor, Predictor, load_model
from ai4life_kit.rundir import ENSEMBLE_MARKER, read_ensemble
from ai4life_kit.simulate import simulate_dataset
from ai4life_kit.training.ensemble import train_ensemble
from kit_helpers import invoke, small_spec

# -- the mathematics ----------------------------------------------------------------------------


def _brute_force_disagreement(means: list[float], scales: list[float]) -> float:
    """``H(mixture) - mean H(member)`` in bits, by the trapezoid rule on a fine grid."""
    y = np.linspace(min(means) - 40 * max(scales), max(means) + 40 * max(scales), 2_000_001)
    densities = [np.exp(-np.abs(y - m) / b) / (2 * b) for m, b in zip(means, scales, strict=True)]

    def entropy(p: np.ndarray) -> float:
        return float(-np.trapezoid(np.where(p > 1e-300, p * np.log(np.maximum(p, 1e-300)), 0.0), y))

    mixture = sum(densities) / len(densities)
    return (entropy(mixture) - np.mean([entropy(p) for p in densities])) / math.log(2)


@pytest.mark.parametrize(
    ("means", "scales"),
    [
        ([0.0, 1.0], [1.0, 1.0]),
        ([0.0, 0.1], [1.0, 1.0]),
        ([0.0, 3.0, -1.0], [1.0, 0.5, 2.0]),
        ([0.0, 0.0], [1.0, 3.0]),
        ([0.0, 50.0], [0.1, 5.0]),
        ([0.0, 5.0, 5.5, 9.0, 30.0], [1.0, 0.3, 2.0, 1.0, 0.5]),
    ],
)
def test_disagreement_is_the_jensen_shannon_divergence_of_the_members(means, scales):
    d = ensemble_disagreement(np.array(means)[:, None], np.array(scales)[:, None])
    assert d.shape == (1,) and d.dtype == np.float32
    assert float(d[0]) == pytest.approx(_brute_force_disagreement(means, scales), rel=1e-4, abs=1e-6)


def test_disagreement_is_zero_for_agreeing_members_and_log2_k_for_disjoint_ones():
    rng = np.random.default_rng(0)
    mu, b = rng.normal(size=(1, 7, 9)), rng.uniform(0.5, 2, size=(1, 7, 9))
    same = ensemble_disagreement(np.repeat(mu, 4, axis=0), np.repeat(b, 4, axis=0))
    assert same.shape == (7, 9) and np.abs(same).max() < 1e-6
    disjoint = ensemble_disagreement(np.array([[0.0], [300.0], [600.0], [900.0]]), np.ones((4, 1)))
    assert float(disjoint[0]) == pytest.approx(2.0, abs=1e-4)  # log2(4) bits
    with pytest.raises(ValueError, match="K >= 2"):
        ensemble_disagreement(np.zeros((1, 3)), np.ones((1, 3)))


def test_ensemble_scale_is_the_mixtures_mean_absolute_deviation():
    means, scales = np.array([[0.0], [3.0], [-1.0]]), np.array([[1.0], [0.5], [2.0]])
    y = np.linspace(-80, 80, 1_600_001)
    centre = float(means.mean())
    mad = np.mean(
        [
            np.trapezoid(np.abs(y - centre) * np.exp(-np.abs(y - m) / b) / (2 * b), y)
            for m, b in zip(means[:, 0], scales[:, 0], strict=True)
        ]
    )
    assert float(ensemble_scale(means, scales)[0]) == pytest.approx(mad, rel=1e-5)
    np.testing.assert_allclose(ensemble_scale(np.zeros((3, 5)), np.full((3, 5), 2.0)), 2.0)  # agreeing: b itself


def test_normal_intervals_cover_normal_noise_at_their_level():
    rng = np.random.default_rng(1)
    sigma = rng.uniform(0.5, 3.0, 200_000)
    truth = rng.normal(0.0, sigma)
    for level in (0.5, 0.9):
        assert coverage(truth, np.zeros_like(truth), sigma, level, family="normal") == pytest.approx(level, abs=0.005)
    assert interval_halfwidth(1.0, 0.9, "normal") == pytest.approx(1.6449, abs=1e-4)
    cal = calibration(truth, np.zeros_like(truth), sigma, family="normal")
    assert cal["family"] == "normal" and cal["error_over_scale"] == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match="family"):
        interval_halfwidth(1.0, 0.5, "cauchy")


# -- training and prediction ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulate_dataset(tmp_path_factory.mktemp("ens") / "sim", shape=(64, 64), n=2, seed=7)


def _quick(alg: str, **overrides):
    return small_spec(alg, 2, training__epochs=1, training__steps_per_epoch=3, training__val_patches=8, **overrides)


@pytest.fixture(scope="module")
def n2v_ensemble(sim, tmp_path_factory):
    out = tmp_path_factory.mktemp("n2v") / "ens"
    result = invoke(
        "train", "model_specs/n2v2-2d.yaml", "--data", sim["noisy"][0], "--out", out, "--ensemble", "3",
        "--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "4", "--patch-size", "32,32", "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout + result.stderr
    return out


def test_train_ensemble_writes_one_run_per_seed(n2v_ensemble):
    marker = read_ensemble(n2v_ensemble)
    assert marker["members"] == ["member-1", "member-2", "member-3"]
    assert marker["seeds"] == [42, 43, 44]
    for name, seed in zip(marker["members"], marker["seeds"], strict=True):
        assert (n2v_ensemble / name / "checkpoints" / "best.pt").is_file()
        assert f"seed: {seed}" in (n2v_ensemble / name / "spec.yaml").read_text()
    states = [Predictor.from_run_dir(n2v_ensemble / m, "cpu").model.state_dict() for m in marker["members"]]
    assert not all(np.array_equal(states[0][k], states[1][k]) for k in states[0])  # different seeds, different nets


def test_ensemble_prediction_is_the_mean_of_the_members_and_std_their_spread(n2v_ensemble, sim, tmp_path):
    src = sim["noisy"][1]
    image = read_image(src).data
    members = [Predictor.from_run_dir(n2v_ensemble / f"member-{i}", "cpu").predict(image, "YX") for i in (1, 2, 3)]
    result = invoke("predict", n2v_ensemble, src, "--out", tmp_path / "den", "-q")  # spread on by default
    assert result.exit_code == 0, result.stdout + result.stderr
    mean = read_image(tmp_path / "den" / src.name).data
    np.testing.assert_allclose(mean, np.mean(members, axis=0), rtol=1e-5, atol=1e-3)
    std = read_image(tmp_path / "den" / "uncertainty" / f"{src.stem}.std.tif").data
    np.testing.assert_allclose(std, np.std(members, axis=0, ddof=1), rtol=1e-4, atol=1e-3)
    assert std.max() > 0
    assert (tmp_path / "den" / "uncertainty" / f"{src.stem}.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "den" / "uncertainty" / src.name).exists()  # no Laplace scale: members are not probabilistic
    quiet = invoke("predict", n2v_ensemble, src, "--out", tmp_path / "d2", "--no-uncertainty", "-q")
    assert quiet.exit_code == 0 and not (tmp_path / "d2" / "uncertainty").exists()
    np.testing.assert_array_equal(read_image(tmp_path / "d2" / src.name).data, mean)


def test_evaluate_uncertainty_reads_an_ensemble_spread_as_normal_sigmas(n2v_ensemble, sim, tmp_path):
    src = sim["noisy"][1]
    den = tmp_path / "den"
    assert invoke("predict", n2v_ensemble, src, "--out", den, "-q").exit_code == 0
    gt_dir = tmp_path / "gt"
    write_image(gt_dir / src.name, read_image(sim["gt"][1]).data, "YX")
    result = invoke("evaluate", den, "--gt", gt_dir, "--uncertainty", "--json", tmp_path / "s.json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "normal sigmas" in result.stdout
    scores = json.loads((tmp_path / "s.json").read_text())["uncertainty"]["pooled"]
    mean = read_image(den / src.name).data
    std = read_image(den / "uncertainty" / f"{src.stem}.std.tif").data
    expected = calibration(read_image(sim["gt"][1]).data, mean, std, family="normal")
    assert scores["family"] == "normal" and scores["coverage90"] == pytest.approx(expected["coverage90"], abs=1e-6)


def test_a_probabilistic_ensemble_gives_scale_and_disagreement(sim, tmp_path):
    spec = _quick("care", algorithm__loss="laplace")
    out = train_ensemble(
        spec, [str(sim["noisy"][0])], [str(sim["gt"][0])], tmp_path / "ens", 2, device="cpu", progress=False
    )
    ens = load_model(out, "cpu")
    assert isinstance(ens, EnsemblePredictor) and ens.probabilistic
    image = read_image(sim["noisy"][1]).data
    mean, maps = ens.predict_with_uncertainty(image, "YX")
    pairs = [Predictor.from_run_dir(out / f"member-{i}", "cpu").predict_with_scale(image, "YX") for i in (1, 2)]
    mus, bs = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    np.testing.assert_allclose(mean, mus.mean(axis=0), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(maps["scale"], ensemble_scale(mus, bs), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(maps["disagreement"], ensemble_disagreement(mus, bs), atol=1e-4)
    assert (maps["scale"] >= bs.mean(axis=0) - 1e-3).all()  # disagreement only widens the interval
    result = invoke("predict", out, sim["noisy"][1], "--out", tmp_path / "den", "-q")
    assert result.exit_code == 0, result.stdout + result.stderr
    stem = sim["noisy"][1].stem
    assert sorted(p.name for p in (tmp_path / "den" / "uncertainty").glob("*.tif")) == [
        f"{stem}.disagreement.tif",
        f"{stem}.tif",
    ]


def test_ensemble_resume_keeps_finished_members_and_overwrite_only_its_own(sim, tmp_path):
    spec = _quick("n2v")
    out = tmp_path / "ens"
    train_ensemble(spec, [str(sim["noisy"][0])], None, out, 2, device="cpu", progress=False)
    (out / "notes.txt").write_text("mine")
    best = (out / "member-1" / "checkpoints" / "best.pt").stat().st_mtime_ns
    # a second member killed before its first epoch: only its marker was written
    for entry in (out / "member-2").iterdir():
        if entry.is_dir():
            for f in entry.iterdir():
                f.unlink()
            entry.rmdir()
        elif entry.name != "ai4life-kit-run.json":
            entry.unlink()
    notes = []
    train_ensemble(
        spec, [str(sim["noisy"][0])], None, out, 2, device="cpu", progress=False, resume=True, log=notes.append
    )
    assert (out / "member-1" / "checkpoints" / "best.pt").stat().st_mtime_ns == best  # finished: kept as it was
    assert (out / "member-2" / "checkpoints" / "best.pt").is_file()
    assert any("member-1" in n and "kept" in n for n in notes)
    with pytest.raises(UserInputError, match="3 with seeds"):
        train_ensemble(spec, [str(sim["noisy"][0])], None, out, 3, device="cpu", progress=False, resume=True)
    train_ensemble(spec, [str(sim["noisy"][0])], None, out, 2, device="cpu", progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / ENSEMBLE_MARKER).is_file()


def test_ensemble_bad_input_is_one_line(sim, tmp_path, n2v_ensemble):
    base = ["train", "model_specs/n2v2-2d.yaml", "--data", sim["noisy"][0]]
    one = invoke(*base, "--out", tmp_path / "e1", "--ensemble", "1", "-q")
    assert one.exit_code == 2 and "Traceback" not in one.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "data.txt").write_text("x")
    busy = invoke(*base, "--out", taken, "--ensemble", "2", "--epochs", "1", "--steps-per-epoch", "1", "-q")
    assert busy.exit_code == 2 and "already exists" in busy.stderr
    assert (taken / "data.txt").read_text() == "x"
    pkg = invoke("package", n2v_ensemble, "--out", tmp_path / "p.zip", "--author", "A. Tester")
    assert pkg.exit_code == 2 and "is an ensemble" in pkg.stderr and "member-1" in pkg.stderr
    zarr = invoke("predict", n2v_ensemble, sim["noisy"][1], "--out", tmp_path / "z", "--out-of-core", "-q")
    assert zarr.exit_code == 2 and "in memory" in zarr.stderr and "Traceback" not in zarr.stderr
    with pytest.raises(Exception, match="is an ensemble"):
        Predictor.from_run_dir(n2v_ensemble, "cpu")
