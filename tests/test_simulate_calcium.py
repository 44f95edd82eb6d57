"""Tests of the calcium-imaging video simulator (:mod:`ai4life_kit.simulate.calcium`) and ``simulate --calcium``.

Sizes are small (a few hundred thousand voxels per video) so that the file runs in seconds on a busy CPU;
the statistical tolerances below are several standard errors wide at those sizes, and the seeds are fixed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

from ai4life_kit.data.tiff_io import read_image
from ai4life_kit.errors import OutputExistsError, UserInputError
from ai4life_kit.simulate import (
    CalciumVideo,
    calcium_kernel,
    parse_video_shape,
    simulate_calcium,
    simulate_calcium_dataset,
)
from kit_helpers import invoke, run_cli

SMALL = (40, 48, 64)


def _sim(**kwargs) -> CalciumVideo:
    kwargs.setdefault("shape", SMALL)
    kwargs.setdefault("n_neurons", 4)
    return simulate_calcium(**kwargs)


def _one_line_error(res) -> str:
    """The CLI's message for a refused input: exit code 2, a single 'Error: ...' line on stderr."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert isinstance(res.exception, SystemExit)
    assert res.stderr.startswith("Error: ")
    assert res.stderr.count("\n") == 1 and res.stderr.endswith("\n")
    return res.stderr


# ---------------------------------------------------------------------------------------------
# reproducibility, shapes, dtypes
# ---------------------------------------------------------------------------------------------
def test_same_seed_identical_and_different_seed_different():
    a, b, c = _sim(seed=7), _sim(seed=7), _sim(seed=8)
    for name in ("clean", "noisy", "spikes", "masks", "dff", "baseline", "centers"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.params == b.params
    assert not np.array_equal(a.noisy, c.noisy)
    assert not np.array_equal(a.clean, c.clean)
    assert not np.array_equal(a.masks, c.masks)


def test_noise_level_does_not_move_the_neurons():
    # Layout, spikes, neuropil and noise have separate random streams: only the noisy video changes.
    quiet, loud = _sim(seed=3, read_noise=1.0), _sim(seed=3, read_noise=6.0)
    assert np.array_equal(quiet.clean, loud.clean)
    assert np.array_equal(quiet.spikes, loud.spikes)
    assert not np.array_equal(quiet.noisy, loud.noisy)


def test_shapes_dtypes_and_masks():
    t, y, x = SMALL
    video = _sim(n_neurons=5, seed=1)
    assert video.noisy.shape == video.clean.shape == SMALL
    assert video.noisy.dtype == np.int16
    assert video.clean.dtype == np.float32
    assert video.spikes.shape == (5, t) and video.spikes.dtype.kind == "i" and video.spikes.min() >= 0
    assert video.dff.shape == (5, t) and video.baseline.shape == (5,) and video.centers.shape == (5, 2)
    assert video.masks.shape == (5, y, x) and video.masks.dtype == np.float32
    assert video.masks.min() >= 0 and video.masks.max() <= 1
    assert video.baseline.max() == pytest.approx(1.0) and video.baseline.min() >= 0.3 - 1e-6
    for mask, (cy, cx) in zip(video.masks, video.centers, strict=True):
        assert mask[round(cy), round(cx)] == pytest.approx(1.0)  # each footprint is centred on its centre
        assert 30 < mask.sum() < 300  # a soma of radius 4-8 px: about 50-200 px
    # Non-overlapping-ish: no pixel lies in the core of two somata.
    assert ((video.masks > 0.5).sum(axis=0) <= 1).all()
    assert video.params["n_neurons"] == 5 and video.params["shape"] == list(SMALL)


def test_neurons_do_not_overlap_at_a_high_density():
    # 30 somata cover about a third of 96 x 96: random centres would put many in each other's core.
    video = simulate_calcium((2, 96, 96), n_neurons=30, seed=2)
    assert ((video.masks > 0.5).sum(axis=0) <= 1).all()
    distance = np.hypot(*(video.centers[:, None] - video.centers[None]).transpose(2, 0, 1))
    assert distance[np.triu_indices(30, 1)].min() >= 0.9 * 2 * 4.0


def test_default_number_of_neurons_follows_the_field_of_view():
    assert simulate_calcium((4, 96, 160), seed=0).params["n_neurons"] == round(96 * 160 / 1500)
    assert simulate_calcium((4, 16, 16), seed=0).masks.shape[0] == 1  # at least one


# ---------------------------------------------------------------------------------------------
# noise
# ---------------------------------------------------------------------------------------------
def test_noise_is_poisson_gaussian_at_the_requested_level():
    gain, read_noise, offset = 3.0, 4.0, 50.0
    video = simulate_calcium((64, 64, 64), n_neurons=8, peak=30.0, gain=gain, read_noise=read_noise, offset=offset)
    signal = (video.clean - offset).ravel().astype(np.float64)
    resid = video.noisy.ravel().astype(np.float64) - video.clean.ravel()
    predicted = gain * signal + read_noise**2 + 1 / 12  # shot noise in counts, read noise, rounding
    # Unbiased: clean is the expectation of noisy.
    assert abs(resid.mean()) < 4 * math.sqrt(predicted.mean() / resid.size)
    # Variance in 20 intensity bins against their mean signal: a line of slope gain (counts per
    # photon) and intercept read_noise**2. Photons instead of counts, or gain**2, would miss both.
    order = np.argsort(signal)
    bins = np.array_split(order, 20)
    mean_signal = np.array([signal[b].mean() for b in bins])
    variance = np.array([resid[b].var() for b in bins])
    slope, intercept = np.polyfit(mean_signal, variance, 1)
    assert slope == pytest.approx(gain, rel=0.05)
    assert intercept == pytest.approx(read_noise**2 + 1 / 12, rel=0.15)
    np.testing.assert_allclose(variance, gain * mean_signal + read_noise**2 + 1 / 12, rtol=0.08)
    assert signal.max() > 5 * signal.min()  # the bins span a wide range of intensities


def test_int16_keeps_values_below_zero_without_bias():
    # Offset-subtracted two-photon data go below zero: int16, not uint16, must keep them.
    video = _sim(peak=4.0, read_noise=3.0, offset=0.0, seed=2)
    assert video.noisy.min() < 0
    resid = video.noisy.astype(np.float64) - video.clean
    assert abs(resid.mean()) < 4 * math.sqrt((video.clean.mean() + 9) / resid.size)


def test_saturating_parameters_are_refused():
    with pytest.raises(UserInputError, match="saturate int16"):
        _sim(peak=20000.0, gain=2.0)


# ---------------------------------------------------------------------------------------------
# transients
# ---------------------------------------------------------------------------------------------
def _isolated_transient(tau_decay: float, frame_rate: float = 30.0) -> tuple[np.ndarray, int, CalciumVideo, int]:
    """dF/F at the centre of a neuron whose first spike is single and followed by 3 tau_decay of silence."""
    quiet = round(3 * tau_decay * frame_rate)
    t_len = 2 * quiet + 60
    video = simulate_calcium(
        (t_len, 96, 96), n_neurons=20, spike_rate=0.15, tau_decay=tau_decay, frame_rate=frame_rate,
        neuropil=0.0, bleaching=0.0, seed=5,
    )  # fmt: skip
    others = video.masks.sum(axis=0) - video.masks
    for n in range(video.masks.shape[0]):
        (frames,) = np.nonzero(video.spikes[n])
        if len(frames) == 0 or video.spikes[n, frames[0]] != 1:
            continue
        s = int(frames[0])
        if 5 <= s < t_len - quiet and (len(frames) == 1 or frames[1] > s + quiet):
            # The brightest pixel of this neuron that no other footprint reaches.
            pure = np.where(others[n] == 0, video.masks[n], 0)
            cy, cx = np.unravel_index(np.argmax(pure), pure.shape)
            trace = video.clean[:, cy, cx].astype(np.float64) - video.params["offset"]
            return trace / trace[0] - 1, s, video, n
    raise AssertionError("no neuron with a single isolated spike: change the seed of this test")


@pytest.mark.parametrize("tau_decay", [0.5, 1.5])
def test_transient_rises_fast_and_decays_with_tau_decay(tau_decay):
    fr = 30.0
    dff, s, video, n = _isolated_transient(tau_decay, fr)
    # Nothing before the spike; the signal is F0 (1 + dF/F) with the neuron's own dF/F trace.
    assert np.all(dff[:s] == pytest.approx(0.0, abs=1e-6))
    np.testing.assert_allclose(dff, video.dff[n], atol=1e-4)
    # Fast rise: up already in the spike's frame, over half the peak one frame later, peak within ~5 frames.
    top = int(np.argmax(dff))
    assert dff[s] > 0.1 * dff[top]
    assert dff[s + 1] > 0.5 * dff[top]
    assert 1 <= top - s <= 5
    assert 0.5 * 0.95 <= dff[top] <= 2.0  # dF/F per spike in the amplitude range (0.5, 2)
    # Exponential decay with the requested time constant, measured once the rise is over (t > 6 tau_rise:
    # at the peak itself the rise term still holds the trace 7 % low): a log-linear fit, and the ratio
    # one tau_decay later, 1/e.
    after = s + round(0.3 * fr)
    k = np.arange(after, s + round(2.5 * tau_decay * fr))
    slope = np.polyfit(k / fr, np.log(dff[k]), 1)[0]
    assert -1 / slope == pytest.approx(tau_decay, rel=0.03)
    assert dff[after + round(tau_decay * fr)] / dff[after] == pytest.approx(math.exp(-1), rel=0.02)


def test_kernel_peaks_at_one_after_the_rise():
    h = calcium_kernel(60, 30.0, 0.05, 1.0)
    t_peak = 0.05 * math.log1p(1.0 / 0.05)  # 152 ms
    assert 0.97 < h.max() <= 1.0
    assert abs((np.argmax(h) + 0.5) / 30.0 - t_peak) <= 1 / 30.0
    assert h[0] > 0 and np.all(np.diff(h[np.argmax(h) :]) < 0)


def test_dff_is_the_spike_train_convolved_with_the_kernel():
    # The recursive filter in the simulator against a direct convolution with calcium_kernel: the same
    # shape for every neuron, scaled by the neuron's own amplitude (dF/F per spike) in (0.5, 2).
    video = _sim(shape=(300, 48, 64), spike_rate=2.0, tau_decay=0.8, seed=11)
    h = calcium_kernel(300, 30.0, 0.05, 0.8)
    for spikes, dff in zip(video.spikes, video.dff, strict=True):
        direct = np.convolve(spikes, h)[:300]
        assert direct.max() > 0
        amplitude = dff.max() / direct.max()
        assert 0.5 <= amplitude <= 2.0
        np.testing.assert_allclose(dff, amplitude * direct, atol=1e-4 * dff.max())


def test_spike_rate_and_frame_rate_set_the_number_of_spikes():
    # 20 neurons for 60 s at 0.5 Hz: 600 spikes expected (std about 46 with the per-neuron rates).
    for frame_rate, t_len in ((30.0, 1800), (15.0, 900)):
        video = simulate_calcium(
            (t_len, 48, 48), n_neurons=20, radius=(2.0, 3.0), spike_rate=0.5, frame_rate=frame_rate, seed=9
        )
        assert video.spikes.sum() == pytest.approx(600, rel=0.25)
    assert simulate_calcium(SMALL, n_neurons=4, spike_rate=0.0).spikes.sum() == 0


# ---------------------------------------------------------------------------------------------
# neuropil and drift
# ---------------------------------------------------------------------------------------------
def test_neuropil_is_a_weak_smooth_background():
    peak, gain, offset, level = 20.0, 1.0, 100.0, 0.15
    video = simulate_calcium((4, 96, 128), n_neurons=6, spike_rate=0.0, bleaching=0.0, neuropil=level, seed=4)
    outside = video.masks.sum(axis=0) == 0
    background = video.clean[0] - offset
    values = background[outside]
    # Present: positive everywhere and varying across the field (the field spans [0.5, 1] of its level).
    assert values.min() > 0
    assert (values.max() - values.min()) / values.max() > 0.2
    # Weak: at most `neuropil` of the brightest resting soma, and at least half of that.
    assert values.max() <= level * peak * gain * (1 + 1e-5)
    assert values.min() >= 0.5 * level * peak * gain * (1 - 1e-5)
    # Smooth: neighbouring pixels differ by about 1 % (white noise of this range would give ~30 %).
    both = outside[:, 1:] & outside[:, :-1]
    assert np.abs(np.diff(background, axis=1))[both].mean() < 0.03 * values.mean()
    # Without neuropil the background is exactly the offset.
    bare = simulate_calcium((4, 96, 128), n_neurons=6, spike_rate=0.0, bleaching=0.0, neuropil=0.0, seed=4)
    assert np.all(bare.clean[0][outside] == offset)


def test_neuropil_follows_the_population_slowly_and_weakly():
    args = {"shape": (600, 96, 128), "n_neurons": 12, "bleaching": 0.0, "seed": 4}
    active = simulate_calcium(spike_rate=1.0, **args)
    rest = simulate_calcium(spike_rate=0.0, **args)  # same layout and neuropil field, no activity
    outside = active.masks.sum(axis=0) == 0
    relative = (active.clean[:, outside] - 100).mean(axis=1) / (rest.clean[:, outside] - 100).mean(axis=1) - 1
    population = active.dff.mean(axis=0)
    # Present and driven by the neurons: it fluctuates, with the population's mean dF/F, low-passed (1 s),
    # scaled by the coupling (0.5).
    assert relative.std() > 0.02
    assert np.corrcoef(relative, population)[0, 1] > 0.7
    np.testing.assert_allclose(relative, 0.5 * ndi.gaussian_filter1d(population, 30.0, mode="nearest"), atol=1e-4)
    # Slow: frame-to-frame steps are a small fraction of its range.
    assert np.abs(np.diff(relative)).mean() < 0.02 * np.ptp(relative)
    # Weak: its fluctuation is a small fraction of the somata's transients (in counts).
    centres = [active.clean[:, round(cy), round(cx)] for cy, cx in active.centers]
    assert (active.clean[:, outside].std(axis=0)).mean() < 0.2 * np.mean([c.std() for c in centres])


@pytest.mark.parametrize("bleaching", [0.0, 0.1, 0.3])
def test_photobleaching_drift(bleaching):
    t_len = 100
    video = _sim(shape=(t_len, 48, 64), spike_rate=0.0, bleaching=bleaching, seed=6)
    total = (video.clean.astype(np.float64) - video.params["offset"]).sum(axis=(1, 2))
    ratio = total / total[0]
    # Exponential loss of `bleaching` by the last frame, for neurons and neuropil alike.
    expected = (1 - bleaching) ** (np.arange(t_len) / (t_len - 1))
    np.testing.assert_allclose(ratio, expected, rtol=1e-5)
    if bleaching:
        assert np.all(np.diff(ratio) < 0)
        # Weak and slow: under 0.4 % per frame, far below a transient's rise (tens of % per frame).
        assert np.abs(np.diff(ratio)).max() < 0.004


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (32, 32)}, "3 positive integers T,Y,X"),
        ({"shape": (10, 32, 32, 2)}, "3 positive integers T,Y,X"),
        ({"shape": (1, 32, 32)}, "at least T = 2"),
        ({"shape": (10, 0, 32)}, "3 positive integers"),
        ({"shape": (10, 4, 32)}, "at least 8 pixels"),
        ({"read_noise": -1.0}, "read noise -1.0"),
        ({"gain": 0.0}, "gain 0.0"),
        ({"peak": -3.0}, "peak -3.0"),
        ({"tau_decay": 0.0}, "tau_decay 0.0"),
        ({"frame_rate": float("nan")}, "frame rate nan"),
        ({"spike_rate": -0.1}, "spike rate -0.1"),
        ({"bleaching": 1.0}, "bleaching 1.0"),
        ({"amplitude": (2.0, 1.0)}, "amplitude"),
        ({"n_neurons": -1}, "number of neurons -1"),
        ({"n_neurons": 2.5}, "number of neurons 2.5"),
        ({"n_neurons": 200}, "do not fit"),
        ({"seed": -1}, "seed -1"),
    ],
)
def test_bad_parameters_are_user_errors(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        _sim(**kwargs)


def test_parse_video_shape():
    assert parse_video_shape("500,256,256") == (500, 256, 256)
    assert parse_video_shape("20x32x48") == (20, 32, 48)
    for bad in ("32,32", "a,32,32", "10,-3,32", "1,32,32", ""):
        with pytest.raises(UserInputError, match="shape"):
            parse_video_shape(bad)


# ---------------------------------------------------------------------------------------------
# dataset on disk
# ---------------------------------------------------------------------------------------------
def test_dataset_files_dtypes_axes_and_parameters(tmp_path):
    out = tmp_path / "ca"
    result = simulate_calcium_dataset(out, n=2, shape=(12, 32, 40), seed=3, n_neurons=2, tau_decay=0.6)
    assert result["noisy"] == [out / "noisy" / "img_000.tif", out / "noisy" / "img_001.tif"]
    assert result["gt"] == [out / "gt" / "img_000.tif", out / "gt" / "img_001.tif"]
    noisy, gt = read_image(result["noisy"][0]), read_image(result["gt"][0])
    assert noisy.dtype == np.int16 and noisy.axes == "TYX" and noisy.data.shape == (12, 32, 40)
    assert gt.dtype == np.float32 and gt.axes == "TYX" and gt.data.shape == (12, 32, 40)
    # The files hold what simulate_calcium makes from the video's own seed (child 0 of the dataset seed).
    video = simulate_calcium((12, 32, 40), n_neurons=2, tau_decay=0.6, seed=np.random.SeedSequence(3).spawn(2)[0])
    assert np.array_equal(tifffile.imread(result["noisy"][0]), video.noisy)
    assert np.array_equal(tifffile.imread(result["gt"][0]), video.clean)
    assert not np.array_equal(tifffile.imread(result["noisy"][1]), video.noisy)
    summary = json.loads((out / "simulation.json").read_text())
    assert summary["complete"] is True and len(summary["input_psnr"]) == 2
    params = summary["parameters"]
    assert params["kind"] == "calcium" and params["seed"] == 3 and params["n"] == 2
    assert params["tau_decay"] == 0.6 and params["n_neurons"] == 2 and params["axes"] == "TYX"


def test_dataset_first_video_does_not_depend_on_n(tmp_path):
    one = simulate_calcium_dataset(tmp_path / "one", n=1, shape=(8, 32, 32), seed=4)
    two = simulate_calcium_dataset(tmp_path / "two", n=2, shape=(8, 32, 32), seed=4)
    assert one["noisy"][0].read_bytes() == two["noisy"][0].read_bytes()
    assert one["gt"][0].read_bytes() == two["gt"][0].read_bytes()


def test_dataset_overwrite_rules(tmp_path):
    out = tmp_path / "ca"
    simulate_calcium_dataset(out, shape=(4, 16, 16), seed=1)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        simulate_calcium_dataset(out, shape=(4, 16, 16), seed=1)
    simulate_calcium_dataset(out, n=2, shape=(4, 16, 16), seed=1, overwrite=True)
    assert len(list((out / "noisy").iterdir())) == 2
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="not created by ai4life-kit"):
        simulate_calcium_dataset(foreign, shape=(4, 16, 16), overwrite=True)
    assert (foreign / "keep.txt").exists()


def test_dataset_refuses_bad_values_before_writing(tmp_path):
    for kwargs in ({"read_noise": -2.0}, {"n": 0}, {"bogus": 1}, {"shape": (1, 16, 16)}):
        with pytest.raises(UserInputError):
            simulate_calcium_dataset(tmp_path / "out", **{"shape": (4, 16, 16), **kwargs})
        assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli_calcium_writes_the_dataset(tmp_path):
    out = tmp_path / "ca"
    args = ["--shape", "24,32,40", "--n", "2", "--seed", "5", "--neurons", "3", "--tau-decay", "0.5"]
    args += ["--gain", "2", "--frame-rate", "20", "--spike-rate", "1", "--peak", "15", "--read-noise", "3"]
    res = invoke("simulate", out, "--calcium", *args)
    assert res.exit_code == 0, res.output
    assert "calcium video" in res.stdout and "PSNR" in res.stdout
    for folder, dtype in (("noisy", np.int16), ("gt", np.float32)):
        files = sorted((out / folder).glob("*.tif"))
        assert [f.name for f in files] == ["img_000.tif", "img_001.tif"]
        image = read_image(files[0])
        assert image.dtype == dtype and image.axes == "TYX" and image.data.shape == (24, 32, 40)
    params = json.loads((out / "simulation.json").read_text())["parameters"]
    expected = {"n_neurons": 3, "tau_decay": 0.5, "gain": 2.0, "frame_rate": 20.0, "spike_rate": 1.0}
    expected |= {"peak": 15.0, "read_noise": 3.0, "seed": 5, "n": 2, "kind": "calcium"}
    assert {k: params[k] for k in expected} == expected
    # The same seed through the API gives the same bytes.
    api = simulate_calcium_dataset(
        tmp_path / "api", n=2, shape=(24, 32, 40), seed=5, n_neurons=3, tau_decay=0.5, gain=2.0,
        frame_rate=20.0, spike_rate=1.0, peak=15.0, read_noise=3.0,
    )  # fmt: skip
    assert api["noisy"][1].read_bytes() == (out / "noisy" / "img_001.tif").read_bytes()


def test_cli_calcium_default_shape_and_seed(tmp_path, monkeypatch):
    # Defaults reach the API untouched: 500,256,256 and seed 42 (checked without simulating that much).
    seen = {}

    def fake(out_dir: Path, **kwargs):
        seen.update(kwargs)
        return {"out_dir": out_dir, "axes": "TYX", "gt": [], "noisy": [], "mean_input_psnr": 0.0}

    monkeypatch.setattr("ai4life_kit.simulate.simulate_calcium_dataset", fake)
    res = invoke("simulate", tmp_path / "ca", "--calcium")
    assert res.exit_code == 0, res.output
    assert seen == {"n": 1, "shape": (500, 256, 256), "seed": 42, "overwrite": False, "peak": 20.0, "read_noise": 2.0}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shape", "32,32"], "shape '32,32' must be 3 positive integers T,Y,X"),
        (["--shape", "10,32,32,3"], "shape '10,32,32,3'"),
        (["--shape", "1,32,32"], "at least T = 2 frames"),
        (["--shape", "10,0,32"], "shape '10,0,32'"),
        (["--shape", "10,-3,32"], "shape '10,-3,32'"),
        (["--shape", "10,a,32"], "shape '10,a,32'"),
        (["--read-noise", "-1"], "read noise -1.0"),
        (["--gain", "0"], "gain 0.0"),
        (["--peak", "0"], "peak 0.0"),
        (["--tau-decay", "-0.5"], "tau_decay -0.5"),
        (["--frame-rate", "0"], "frame rate 0.0"),
        (["--spike-rate", "-1"], "spike rate -1.0"),
        (["--neurons", "-2"], "number of neurons -2"),
        (["--n", "0"], "number of videos 0"),
        (["--seed", "-3"], "seed -3"),
        (["--pairs"], "--pairs is not available with --calcium"),
        (["--structured-noise", "row"], "--structured-noise is not available with --calcium"),
    ],
)
def test_cli_calcium_bad_input_one_line_exit_2(tmp_path, args, message):
    res = invoke("simulate", tmp_path / "out", "--calcium", "--shape", "4,16,16", *args)
    assert message in _one_line_error(res)
    assert not (tmp_path / "out").exists()


def test_cli_calcium_options_need_calcium(tmp_path):
    res = invoke("simulate", tmp_path / "out", "--shape", "16,16", "--frame-rate", "30", "--gain", "2")
    assert "--frame-rate, --gain only applies to calcium videos: add --calcium" in _one_line_error(res)
    assert not (tmp_path / "out").exists()


def test_cli_without_calcium_still_simulates_images(tmp_path):
    res = invoke("simulate", tmp_path / "img", "--shape", "16,24")
    assert res.exit_code == 0, res.output
    image = read_image(tmp_path / "img" / "noisy" / "img_000.tif")
    assert image.dtype == np.uint16 and image.axes == "YX" and image.data.shape == (16, 24)


def test_cli_calcium_bad_shape_as_a_real_process(tmp_path):
    proc = run_cli("simulate", tmp_path / "out", "--calcium", "--shape", "2,16", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "Error: shape '2,16' must be 3 positive integers T,Y,X (e.g. 500,256,256)\n"
    assert not (tmp_path / "out").exists()
