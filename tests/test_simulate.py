"""Tests of the synthetic-data simulator: structure, noise statistics, files, seeds, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from ai4life_kit.data.tiff_io import read_image
from ai4life_kit.errors import OutputExistsError, UserInputError
from ai4life_kit.metrics import psnr
from ai4life_kit.simulate import (
    DEFAULT_OFFSET,
    add_noise,
    parse_shape,
    simulate_dataset,
    simulate_ground_truth,
)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _residual(lam: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    return noisy.astype(np.float64) - DEFAULT_OFFSET - lam


# ---------------------------------------------------------------------------------------------
# ground truth
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(96, 128), (12, 64, 80)])
def test_ground_truth_shape_range_and_structure(shape):
    lam = simulate_ground_truth(shape, np.random.default_rng(0), peak=30.0)
    assert lam.shape == shape
    assert lam.dtype == np.float32
    assert lam.max() == pytest.approx(30.0, rel=1e-6)
    assert lam.min() > 0  # the background is never dark
    # Sparse bright structure on a dim background, as in fluorescence.
    assert np.median(lam) < 0.25 * lam.max()
    assert (lam > 0.3 * lam.max()).mean() > 0.001


def test_ground_truth_is_smooth_like_a_psf_blurred_image():
    lam = simulate_ground_truth((128, 128), np.random.default_rng(1), peak=20.0)
    # PSF-blurred: neighbouring pixels are strongly correlated (white noise would give ~0).
    assert _corr(lam[:, 1:], lam[:, :-1]) > 0.8
    assert _corr(lam[1:, :], lam[:-1, :]) > 0.8


def test_ground_truth_same_rng_same_image_and_different_seed_differs():
    a = simulate_ground_truth((64, 64), np.random.default_rng(3))
    b = simulate_ground_truth((64, 64), np.random.default_rng(3))
    c = simulate_ground_truth((64, 64), np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (8, 8), (1, 9, 9), (2, 16, 16)])
def test_ground_truth_tiny_shapes_work(shape):
    lam = simulate_ground_truth(shape, np.random.default_rng(0), peak=5.0)
    assert lam.shape == shape
    assert np.isfinite(lam).all()
    assert lam.max() == pytest.approx(5.0, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------------------------
def test_poisson_gaussian_moments():
    lam = np.full((256, 256), 50.0, np.float32)
    noisy = add_noise(lam, np.random.default_rng(0), read_noise=3.0)
    assert noisy.dtype == np.uint16
    res = _residual(lam, noisy)
    assert res.mean() == pytest.approx(0.0, abs=0.1)
    # Poisson variance lam + read variance 9 (+ 1/12 from rounding).
    assert res.var() == pytest.approx(50 + 9 + 1 / 12, rel=0.03)
    # Pixel-independent noise: no correlation between neighbours.
    assert abs(_corr(res[:, 1:], res[:, :-1])) < 0.02


def test_row_noise_is_correlated_along_x_only():
    lam = np.full((256, 256), 100.0, np.float32)
    noisy = add_noise(lam, np.random.default_rng(1), read_noise=0.0, structured_noise="row")
    res = _residual(lam, noisy)
    # Structured std equals the shot-noise std at this level: half the variance is structured,
    # whose x-correlation at lag k is (5 - k) / 5, so lags 1 and 2 give 0.4 and 0.3.
    assert _corr(res[:, 1:], res[:, :-1]) == pytest.approx(0.4, abs=0.03)
    assert _corr(res[:, 2:], res[:, :-2]) == pytest.approx(0.3, abs=0.03)
    assert abs(_corr(res[:, 5:], res[:, :-5])) < 0.02
    assert abs(_corr(res[1:, :], res[:-1, :])) < 0.02
    assert res.var() == pytest.approx(200, rel=0.05)


def test_column_noise_is_a_fixed_pattern_along_columns():
    lam = np.full((256, 128), 100.0, np.float32)
    pattern = np.random.default_rng(9).normal(0, 10, 128).astype(np.float32)
    a = _residual(lam, add_noise(lam, np.random.default_rng(1), 2.0, "column", column_offsets=pattern))
    b = _residual(lam, add_noise(lam, np.random.default_rng(2), 2.0, "column", column_offsets=pattern))
    # Column means recover the pattern, the same in both images; rows are uncorrelated.
    assert _corr(a.mean(axis=0), pattern) > 0.98
    assert _corr(a.mean(axis=0), b.mean(axis=0)) > 0.98
    assert abs(_corr(a.mean(axis=1), b.mean(axis=1))) < 0.3


def test_noise_clips_to_uint16_and_rounds():
    lam = np.array([[0.0, 1e6]], np.float32)
    noisy = add_noise(lam, np.random.default_rng(0), read_noise=0.0, offset=0.0)
    assert noisy.dtype == np.uint16
    assert noisy[0, 1] == 65535


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"read_noise": -1.0}, "read noise -1.0"),
        ({"structured_noise": "diagonal"}, "'diagonal'"),
        ({"offset": -5.0}, "offset -5.0"),
    ],
)
def test_add_noise_rejects_bad_values(kwargs, match):
    with pytest.raises(UserInputError, match=match):
        add_noise(np.ones((8, 8), np.float32), np.random.default_rng(0), **kwargs)


def test_add_noise_rejects_negative_lam():
    with pytest.raises(UserInputError, match="lam"):
        add_noise(-np.ones((8, 8), np.float32), np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------
# dataset on disk
# ---------------------------------------------------------------------------------------------
def test_dataset_files_dtypes_axes_and_units(tmp_path):
    out = tmp_path / "sim"
    res = simulate_dataset(out, shape=(64, 80), n=2, seed=1)
    assert [p.name for p in res["gt"]] == ["img_000.tif", "img_001.tif"]
    assert res["noisy2"] == []
    assert not (out / "noisy2").exists()
    for gt_path, noisy_path in zip(res["gt"], res["noisy"], strict=True):
        gt, noisy = read_image(gt_path), read_image(noisy_path)
        assert gt.dtype == np.float32 and noisy.dtype == np.uint16
        assert gt.axes == noisy.axes == "YX"
        assert gt.data.shape == noisy.data.shape == (64, 80)
        # gt is lam + offset: same units as the noisy image, which is unbiased around it.
        assert gt.data.min() > DEFAULT_OFFSET
        assert gt.data.max() == pytest.approx(DEFAULT_OFFSET + 20.0)
        assert noisy.data.mean() == pytest.approx(gt.data.mean(), abs=0.3)
    with tifffile.TiffFile(res["noisy"][0]) as tif:
        assert tif.pages[0].tags["ResolutionUnit"].value == 3  # centimeter
    summary = json.loads((out / "simulation.json").read_text())
    assert summary["complete"] is True
    assert summary["parameters"]["shape"] == [64, 80]
    assert summary["input_psnr"] == pytest.approx(res["input_psnr"])
    assert not list(out.rglob("*.tmp*"))  # no temporary files left behind


def test_dataset_3d_has_zyx_axes(tmp_path):
    res = simulate_dataset(tmp_path / "sim3d", shape=(8, 32, 40), seed=0)
    img = read_image(res["noisy"][0])
    assert img.axes == "ZYX"
    assert img.data.shape == (8, 32, 40)
    assert read_image(res["gt"][0]).axes == "ZYX"


def test_input_psnr_is_reported_and_lower_at_lower_peak(tmp_path):
    low = simulate_dataset(tmp_path / "low", shape=(96, 96), peak=5.0, read_noise=1.0, seed=0)
    high = simulate_dataset(tmp_path / "high", shape=(96, 96), peak=100.0, read_noise=2.0, seed=0)
    assert low["mean_input_psnr"] < high["mean_input_psnr"] - 5
    gt = read_image(low["gt"][0]).data
    noisy = read_image(low["noisy"][0]).data
    assert low["input_psnr"][0] == pytest.approx(psnr(gt, noisy), abs=1e-4)


def test_pairs_share_ground_truth_but_not_noise(tmp_path):
    res = simulate_dataset(tmp_path / "n2n", shape=(64, 64), pairs=True, seed=5)
    a = read_image(res["noisy"][0]).data
    b = read_image(res["noisy2"][0]).data
    gt = read_image(res["gt"][0]).data
    assert not np.array_equal(a, b)
    # Independent realisations: their noise is uncorrelated, both follow the same gt.
    assert abs(_corr(a - gt, b - gt)) < 0.1
    assert _corr(a, gt) > 0.5 and _corr(b, gt) > 0.5


def test_column_pattern_is_shared_by_all_images_of_a_run(tmp_path):
    res = simulate_dataset(tmp_path / "col", shape=(128, 96), n=2, structured_noise="column", pairs=True, seed=2)
    cols = []
    for key, i in (("noisy", 0), ("noisy", 1), ("noisy2", 0)):
        gt = read_image(res["gt"][i]).data
        cols.append((read_image(res[key][i]).data - gt).mean(axis=0))
    assert _corr(cols[0], cols[1]) > 0.9
    assert _corr(cols[0], cols[2]) > 0.9


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.tif"))}


def test_same_seed_identical_files_different_seed_different(tmp_path):
    kwargs = {"shape": (48, 48), "n": 2, "pairs": True, "structured_noise": "row"}
    simulate_dataset(tmp_path / "a", seed=7, **kwargs)
    simulate_dataset(tmp_path / "b", seed=7, **kwargs)
    simulate_dataset(tmp_path / "c", seed=8, **kwargs)
    a, b, c = (_file_bytes(tmp_path / x) for x in "abc")
    assert len(a) == 6
    assert a == b
    assert all(a[k] != c[k] for k in a)


def test_first_image_does_not_depend_on_n_or_pairs(tmp_path):
    one = simulate_dataset(tmp_path / "one", shape=(40, 40), n=1, seed=3)
    three = simulate_dataset(tmp_path / "three", shape=(40, 40), n=3, pairs=True, seed=3)
    assert one["gt"][0].read_bytes() == three["gt"][0].read_bytes()
    assert one["noisy"][0].read_bytes() == three["noisy"][0].read_bytes()


def test_existing_folder_needs_overwrite_and_foreign_folder_is_kept(tmp_path):
    out = tmp_path / "sim"
    simulate_dataset(out, shape=(16, 16), seed=0)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        simulate_dataset(out, shape=(16, 16), seed=0)
    simulate_dataset(out, shape=(16, 16), n=2, seed=1, overwrite=True)
    assert len(list((out / "noisy").iterdir())) == 2

    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("do not delete")
    with pytest.raises(OutputExistsError, match="not created by ai4life-kit"):
        simulate_dataset(foreign, shape=(16, 16), overwrite=True)
    assert (foreign / "thesis.txt").read_text() == "do not delete"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (5,)}, r"shape \(5,\)"),
        ({"shape": (0, 5)}, r"shape \(0, 5\)"),
        ({"shape": (1, 2, 3, 4)}, r"shape \(1, 2, 3, 4\)"),
        ({"shape": (5.5, 5)}, r"shape \(5.5, 5\)"),
        ({"shape": "abc"}, "shape 'abc'"),
        ({"peak": 0.0}, "peak 0.0"),
        ({"peak": -3.0}, "peak -3.0"),
        ({"peak": float("nan")}, "peak nan"),
        ({"peak": 70000.0}, "peak 70000.0"),
        ({"n": 0}, "number of images 0"),
        ({"seed": -1}, "seed -1"),
        ({"read_noise": -2.0}, "read noise -2.0"),
        ({"structured_noise": "diag"}, "'diag'"),
    ],
)
def test_dataset_rejects_bad_values_naming_them(tmp_path, kwargs, match):
    args = {"shape": (16, 16), **kwargs}
    with pytest.raises(UserInputError, match=match):
        simulate_dataset(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()  # nothing written before validation


@pytest.mark.parametrize(
    ("text", "shape"), [("64,48", (64, 48)), (" 8, 64 ,64", (8, 64, 64)), ("8x32x32", (8, 32, 32))]
)
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["64;64", "64", "64,0", "1,2,3,4", "", "a,b"])
def test_parse_shape_rejects(text):
    with pytest.raises(UserInputError, match="shape"):
        parse_shape(text)


# ---------------------------------------------------------------------------------------------
# sizes, memory and disk are checked before anything is written; never a half-made folder
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (7, 64), (4, 64, 3)])
def test_too_small_images_are_refused_before_writing(tmp_path, shape):
    with pytest.raises(UserInputError, match="at least 8 pixels"):
        simulate_dataset(tmp_path / "out", shape=shape)
    assert not (tmp_path / "out").exists()


def test_an_image_larger_than_memory_is_refused_before_writing(tmp_path):
    with pytest.raises(UserInputError, match=r"100000x100000 image needs about 447\.0 GiB of memory"):
        simulate_dataset(tmp_path / "out", shape=(100000, 100000))
    assert not (tmp_path / "out").exists()
    simulate_dataset(tmp_path / "out", shape=(16, 16))  # and the rerun does not say "already exists"


def test_more_images_than_the_disk_holds_are_refused(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _path: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(UserInputError, match=r"3 simulated 256x256 image\(s\) need 0\.0 GiB .* free"):
        simulate_dataset(tmp_path / "out", shape=(256, 256), n=3)  # 3 * 256^2 * 6 B = 1.2 MB > 1 MB
    assert not (tmp_path / "out").exists()


def test_a_failure_midway_leaves_no_folder_and_keeps_the_old_one(tmp_path, monkeypatch):
    import ai4life_kit.simulate.dataset as sim

    out = tmp_path / "sim"
    simulate_dataset(out, shape=(32, 32), n=1, seed=0)
    old = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []

    def failing_write(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # the third noisy image: two images are written by then
            raise MemoryError
        return real_write(path, *args, **kwargs)

    real_write = sim._write_uint16
    monkeypatch.setattr(sim, "_write_uint16", failing_write)
    with pytest.raises(MemoryError):
        simulate_dataset(out, shape=(32, 32), n=3, seed=1, overwrite=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == old
    assert [p.name for p in tmp_path.iterdir()] == ["sim"]  # no staging folder left beside it
    with pytest.raises(MemoryError):
        calls.clear()
        simulate_dataset(tmp_path / "new", shape=(32, 32), n=3, seed=1)
    assert not (tmp_path / "new").exists()
