"""CIDC25's temporal metrics (stSNR and its parts, percentile-range PSNR) against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ai4life_kit import metrics_temporal
from ai4life_kit.errors import DataError
from ai4life_kit.metrics_temporal import (
    DEFAULT_ALPHA,
    SNR_CEILING_DB,
    evaluate_video,
    percentile_range_psnr,
    snr_db,
    spatial_snr,
    stsnr,
    temporal_snr,
)

# A 2 x 2 x 2 video (T, Y, X) and a prediction = gt + NOISE, small enough to score by hand.
GT = np.array([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], dtype=np.int16)
NOISE = np.array([[[1, 0], [0, -1]], [[0, 2], [0, 0]]], dtype=np.int16)
PRED = GT + NOISE

# Frame 0: gt 1, 2, 3, 4 and errors 1, 0, 0, -1. Frame 1: gt 5, 6, 7, 8 and errors 0, 2, 0, 0.
FRAME_0 = 10 * math.log10((1**2 + 2**2 + 3**2 + 4**2) / (1**2 + 0**2 + 0**2 + 1**2))  # 30 / 2
FRAME_1 = 10 * math.log10((5**2 + 6**2 + 7**2 + 8**2) / (0**2 + 2**2 + 0**2 + 0**2))  # 174 / 4
HAND_SPATIAL = (FRAME_0 + FRAME_1) / 2
# Traces: (0,0) gt 1, 5 errors 1, 0; (0,1) gt 2, 6 errors 0, 2; (1,0) gt 3, 7 predicted exactly
# (infinite SNR, capped at 100 dB); (1,1) gt 4, 8 errors -1, 0.
TRACE_00 = 10 * math.log10((1**2 + 5**2) / (1**2 + 0**2))  # 26 / 1
TRACE_01 = 10 * math.log10((2**2 + 6**2) / (0**2 + 2**2))  # 40 / 4
TRACE_10 = 100.0
TRACE_11 = 10 * math.log10((4**2 + 8**2) / (1**2 + 0**2))  # 80 / 1
HAND_TEMPORAL = (TRACE_00 + TRACE_01 + TRACE_10 + TRACE_11) / 4
# All eight elements: signal 30 + 174 = 204, error 2 + 4 = 6.
HAND_SNR = 10 * math.log10(204 / 6)
# np.percentile's "linear" method on the sorted values 1..8: position p / 100 * (8 - 1).
HAND_RANGE = (1 + 0.97 * 7) - (1 + 0.03 * 7)
HAND_PSNR = 10 * math.log10(HAND_RANGE**2 / (6 / 8))


def _reference(gt: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """Spatial and temporal SNR written with plain loops, as the docstrings define them."""
    gt, x = gt.astype(np.float64), x.astype(np.float64)

    def capped(g: np.ndarray, p: np.ndarray) -> float | None:
        signal, error = float(np.sum(g**2)), float(np.sum((g - p) ** 2))
        if signal == 0:
            return None
        return SNR_CEILING_DB if error == 0 else min(10 * math.log10(signal / error), SNR_CEILING_DB)

    frames = [capped(gt[t], x[t]) for t in range(gt.shape[0])]
    traces = [capped(gt[:, i, j], x[:, i, j]) for i in range(gt.shape[1]) for j in range(gt.shape[2])]
    frames = [v for v in frames if v is not None]
    traces = [v for v in traces if v is not None]
    return sum(frames) / len(frames), sum(traces) / len(traces)


def _random_video(shape=(9, 5, 7), seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.integers(-200, 3000, size=shape).astype(np.int16)
    pred = (gt + rng.normal(0, 40, size=shape)).astype(np.float32)
    return gt, pred


# ---------------------------------------------------------------------------------------------
# hand-computed values
# ---------------------------------------------------------------------------------------------
def test_snr_db_by_hand():
    assert snr_db(GT, PRED) == pytest.approx(HAND_SNR, rel=1e-12)
    # The participant's formula with means is the same number.
    assert snr_db(GT, PRED) == pytest.approx(10 * math.log10((204 / 8) / (6 / 8)), rel=1e-12)
    # Any shape: a 1D pair, gt 3, 4 and errors 1, 1 -> 25 / 2.
    assert snr_db([3, 4], [4, 5]) == pytest.approx(10 * math.log10(25 / 2), rel=1e-12)


def test_spatial_snr_by_hand_is_the_mean_of_frame_db_values():
    assert spatial_snr(GT, PRED) == pytest.approx(HAND_SPATIAL, rel=1e-12)
    # Not the SNR of the mean power ratio, nor the SNR of the whole video.
    ratio_mean = 10 * math.log10((30 / 2 + 174 / 4) / 2)
    assert abs(spatial_snr(GT, PRED) - ratio_mean) > 0.1
    assert abs(spatial_snr(GT, PRED) - HAND_SNR) > 0.1


def test_temporal_snr_by_hand_with_one_exact_trace_capped():
    assert temporal_snr(GT, PRED) == pytest.approx(HAND_TEMPORAL, rel=1e-12)


def test_stsnr_by_hand_and_alpha_extremes():
    assert stsnr(GT, PRED) == pytest.approx(0.5 * HAND_SPATIAL + 0.5 * HAND_TEMPORAL, rel=1e-12)
    assert stsnr(GT, PRED, alpha=0.25) == pytest.approx(0.25 * HAND_SPATIAL + 0.75 * HAND_TEMPORAL, rel=1e-12)
    assert stsnr(GT, PRED, alpha=1) == pytest.approx(HAND_SPATIAL, rel=1e-12)
    assert stsnr(GT, PRED, alpha=0) == pytest.approx(HAND_TEMPORAL, rel=1e-12)
    assert stsnr(GT, PRED, alpha=1) == spatial_snr(GT, PRED)
    assert stsnr(GT, PRED, alpha=0) == temporal_snr(GT, PRED)
    assert DEFAULT_ALPHA == 0.5


def test_percentile_psnr_by_hand():
    assert percentile_range_psnr(GT, PRED) == pytest.approx(HAND_PSNR, rel=1e-12)
    # 0..100: the 3rd and 97th percentiles are 3 and 97; one error of 1 among 101 elements.
    gt = np.arange(101)
    x = gt.copy()
    x[50] += 1
    assert percentile_range_psnr(gt, x) == pytest.approx(10 * math.log10(94**2 / (1 / 101)), rel=1e-12)
    # Other percentiles: 10th and 90th of 0..100 are 10 and 90.
    assert percentile_range_psnr(gt, x, low=10, high=90) == pytest.approx(10 * math.log10(80**2 / (1 / 101)), rel=1e-12)


def test_percentile_psnr_equals_np_percentile_on_the_ground_truth():
    gt, pred = _random_video(shape=(6, 11, 13), seed=3)
    g = gt.astype(np.float64)
    data_range = np.percentile(g, 97) - np.percentile(g, 3)
    mse = np.mean((g - pred.astype(np.float64)) ** 2)
    assert percentile_range_psnr(gt, pred) == pytest.approx(10 * math.log10(data_range**2 / mse), rel=1e-12)
    # The range is the ground truth's, not the prediction's (nor max - min).
    other = np.percentile(pred.astype(np.float64), 97) - np.percentile(pred.astype(np.float64), 3)
    assert other != pytest.approx(data_range, rel=1e-6)
    assert percentile_range_psnr(pred, gt) != pytest.approx(percentile_range_psnr(gt, pred), rel=1e-6)


def test_percentile_range_does_not_overflow_int16():
    # np.percentile interpolates int16 in int16: 30000 - (-30000) wraps, and its range here is 60332.16.
    gt = np.array([-30000, 30000], dtype=np.int16).reshape(1, 1, 2)
    x = np.array([-29999.0, 30000.0]).reshape(1, 1, 2)
    # Positions 0.03 * (2 - 1) and 0.97 * (2 - 1) between -30000 and 30000, interpolated in float64.
    p3 = -30000 + 0.03 * 60000
    p97 = -30000 + 0.97 * 60000
    assert p97 - p3 == pytest.approx(56400)
    assert percentile_range_psnr(gt, x) == pytest.approx(10 * math.log10((p97 - p3) ** 2 / (1 / 2)), rel=1e-12)


def test_evaluate_video_by_hand():
    out = evaluate_video(GT, PRED)
    assert set(out) == {"stsnr", "spatial_snr", "temporal_snr", "psnr_p3_p97", "alpha"}
    assert all(type(v) is float for v in out.values())
    assert out["spatial_snr"] == pytest.approx(HAND_SPATIAL, rel=1e-12)
    assert out["temporal_snr"] == pytest.approx(HAND_TEMPORAL, rel=1e-12)
    assert out["stsnr"] == pytest.approx(0.5 * HAND_SPATIAL + 0.5 * HAND_TEMPORAL, rel=1e-12)
    assert out["psnr_p3_p97"] == pytest.approx(HAND_PSNR, rel=1e-12)
    assert out["alpha"] == 0.5
    out = evaluate_video(GT, PRED, alpha=0.2)
    assert out["alpha"] == 0.2
    assert out["stsnr"] == pytest.approx(0.2 * HAND_SPATIAL + 0.8 * HAND_TEMPORAL, rel=1e-12)


def test_evaluate_video_agrees_with_the_separate_functions():
    gt, pred = _random_video()
    out = evaluate_video(gt, pred, alpha=0.3)
    assert out["spatial_snr"] == pytest.approx(spatial_snr(gt, pred), rel=1e-12)
    assert out["temporal_snr"] == pytest.approx(temporal_snr(gt, pred), rel=1e-12)
    assert out["stsnr"] == pytest.approx(stsnr(gt, pred, alpha=0.3), rel=1e-12)
    assert out["psnr_p3_p97"] == pytest.approx(percentile_range_psnr(gt, pred), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# float64 arithmetic, blocks of frames
# ---------------------------------------------------------------------------------------------
def test_int16_inputs_are_computed_in_float64():
    # gt - x = 60000 and 30000**2 both overflow int16.
    gt = np.full((2, 1, 2), 30000, dtype=np.int16)
    x = gt.copy()
    x[0, 0, 0] = -30000
    # Frame 0: signal 2 * 30000**2, error 60000**2; frame 1 exact (capped).
    frame_0 = 10 * math.log10(2 * 30000**2 / 60000**2)
    assert spatial_snr(gt, x) == pytest.approx((frame_0 + 100.0) / 2, rel=1e-12)
    # Trace (0, 0): signal 2 * 30000**2, error 60000**2; trace (0, 1) exact (capped).
    assert temporal_snr(gt, x) == pytest.approx((frame_0 + 100.0) / 2, rel=1e-12)
    assert snr_db(gt, x) == pytest.approx(10 * math.log10(4 * 30000**2 / 60000**2), rel=1e-12)


@pytest.mark.parametrize("block_elements", [1, 35, 70, 1 << 22], ids=["one-frame", "one-frame-35", "two-frames", "all"])
def test_block_processing_matches_a_plain_reference(monkeypatch, block_elements):
    # Frames of 5 x 7 = 35 elements, 9 frames: blocks of 1 and 2 frames, with a short last block.
    monkeypatch.setattr(metrics_temporal, "_BLOCK_ELEMENTS", block_elements)
    gt, pred = _random_video()
    ref_spatial, ref_temporal = _reference(gt, pred)
    assert spatial_snr(gt, pred) == pytest.approx(ref_spatial, rel=1e-12)
    assert temporal_snr(gt, pred) == pytest.approx(ref_temporal, rel=1e-12)
    g, p = gt.astype(np.float64), pred.astype(np.float64)
    assert snr_db(gt, pred) == pytest.approx(10 * math.log10(np.sum(g**2) / np.sum((g - p) ** 2)), rel=1e-12)
    data_range = np.percentile(g, 97) - np.percentile(g, 3)
    expected_psnr = 10 * math.log10(data_range**2 / np.mean((g - p) ** 2))
    assert evaluate_video(gt, pred)["psnr_p3_p97"] == pytest.approx(expected_psnr, rel=1e-12)


def test_inputs_are_not_modified():
    gt = np.linspace(1, 2, 24).reshape(2, 3, 4)
    x = gt + 0.01
    gt_before, x_before = gt.copy(), x.copy()
    evaluate_video(gt, x)
    snr_db(gt, x)
    percentile_range_psnr(gt, x)
    np.testing.assert_array_equal(gt, gt_before)
    np.testing.assert_array_equal(x, x_before)


# ---------------------------------------------------------------------------------------------
# ceiling and skipped frames/traces
# ---------------------------------------------------------------------------------------------
def test_identical_inputs_hit_the_ceiling():
    gt, _ = _random_video()
    assert SNR_CEILING_DB == 100.0
    assert snr_db(gt, gt) == math.inf
    assert spatial_snr(gt, gt) == SNR_CEILING_DB
    assert temporal_snr(gt, gt) == SNR_CEILING_DB
    assert stsnr(gt, gt) == SNR_CEILING_DB
    assert percentile_range_psnr(gt, gt) == math.inf
    out = evaluate_video(gt, gt)
    assert out["stsnr"] == out["spatial_snr"] == out["temporal_snr"] == SNR_CEILING_DB
    assert out["psnr_p3_p97"] == math.inf


def test_ceiling_caps_finite_values_above_it():
    # A 1 x 1 x 2 video: signal 2e12, error 1e-12 -> 10 log10(2e24) = 243 dB, capped per frame.
    gt = np.full((1, 1, 2), 1e6)
    x = gt.copy()
    x[0, 0, 0] += 1e-6
    assert snr_db(gt, x) > 200
    assert spatial_snr(gt, x) == SNR_CEILING_DB
    # Traces: one at 10 log10(1e12 / 1e-12) = 240 dB, one exact: both capped.
    assert temporal_snr(gt, x) == SNR_CEILING_DB


def test_all_zero_frames_are_skipped():
    gt = GT.astype(np.float64)
    gt[1] = 0
    x = PRED.astype(np.float64)  # frame 1 is predicted as non-zero: an error but no signal
    assert spatial_snr(gt, x) == pytest.approx(FRAME_0, rel=1e-12)
    # Traces now have gt (1, 0), (2, 0), (3, 0), (4, 0) and errors (1, 5), (0, 8), (0, 7), (-1, 8).
    traces = [
        10 * math.log10(1**2 / (1**2 + 5**2)),
        10 * math.log10(2**2 / (0**2 + 8**2)),
        10 * math.log10(3**2 / (0**2 + 7**2)),
        10 * math.log10(4**2 / (1**2 + 8**2)),
    ]
    assert temporal_snr(gt, x) == pytest.approx(sum(traces) / 4, rel=1e-12)


def test_all_zero_traces_are_skipped():
    gt = GT.astype(np.float64)
    gt[:, 0, 1] = 0  # the trace with errors 0, 2 now has no signal
    x = PRED.astype(np.float64)
    assert temporal_snr(gt, x) == pytest.approx((TRACE_00 + TRACE_10 + TRACE_11) / 3, rel=1e-12)
    # Frames: frame 0 has gt 1, 0, 3, 4 and errors 1, 2, 0, -1; frame 1 gt 5, 0, 7, 8 and errors 0, 8, 0, 0.
    frame_0 = 10 * math.log10((1**2 + 3**2 + 4**2) / (1**2 + 2**2 + 1**2))
    frame_1 = 10 * math.log10((5**2 + 7**2 + 8**2) / 8**2)
    assert spatial_snr(gt, x) == pytest.approx((frame_0 + frame_1) / 2, rel=1e-12)


def test_all_zero_ground_truth_raises():
    gt = np.zeros((2, 2, 2))
    x = np.ones((2, 2, 2))
    with pytest.raises(DataError, match="zero"):
        snr_db(gt, x)
    with pytest.raises(DataError, match="every one of them"):
        spatial_snr(gt, x)
    with pytest.raises(DataError, match="every one of them"):
        temporal_snr(gt, x)
    with pytest.raises(DataError, match="zero"):
        stsnr(gt, x)
    with pytest.raises(DataError, match="zero"):
        evaluate_video(gt, x)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------
VIDEO_FUNCTIONS = [spatial_snr, temporal_snr, stsnr, evaluate_video]
ALL_FUNCTIONS = [snr_db, percentile_range_psnr, *VIDEO_FUNCTIONS]


@pytest.mark.parametrize("func", ALL_FUNCTIONS, ids=lambda f: f.__name__)
def test_shape_mismatch_raises(func):
    with pytest.raises(DataError, match=r"prediction shape \(2, 2, 3\) differs from ground-truth shape \(2, 2, 2\)"):
        func(GT, np.zeros((2, 2, 3)))


@pytest.mark.parametrize("func", VIDEO_FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 4, 5), (7,)], ids=["2d", "4d", "1d"])
def test_non_3d_input_raises_naming_the_shape(func, shape):
    a = np.arange(1, math.prod(shape) + 1, dtype=np.float64).reshape(shape)
    with pytest.raises(DataError) as info:
        func(a, a + 1)
    message = str(info.value)
    assert str(shape) in message
    assert "(T, Y, X)" in message
    assert "\n" not in message


@pytest.mark.parametrize("func", ALL_FUNCTIONS, ids=lambda f: f.__name__)
def test_empty_input_raises(func):
    with pytest.raises(DataError, match="empty"):
        func(np.zeros((0, 2, 2)), np.zeros((0, 2, 2)))


@pytest.mark.parametrize("func", ALL_FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["ground truth", "prediction"])
def test_non_finite_values_raise(func, bad, where):
    gt = GT.astype(np.float64)
    x = PRED.astype(np.float64)
    (gt if where == "ground truth" else x)[1, 0, 1] = bad
    with pytest.raises(DataError, match=f"{where} contains NaN or Inf"):
        func(gt, x)


@pytest.mark.parametrize("func", [stsnr, evaluate_video], ids=lambda f: f.__name__)
@pytest.mark.parametrize("alpha", [-0.01, 1.01, 2, math.nan])
def test_alpha_outside_unit_interval_raises(func, alpha):
    with pytest.raises(ValueError, match="alpha must be in"):
        func(GT, PRED, alpha=alpha)


@pytest.mark.parametrize(("low", "high"), [(-1, 97), (3, 101), (50, 50), (97, 3), (math.nan, 97)])
def test_bad_percentiles_raise(low, high):
    with pytest.raises(ValueError, match="percentiles must satisfy"):
        percentile_range_psnr(GT, PRED, low=low, high=high)


def test_zero_percentile_range_raises_even_with_outliers():
    # 98 equal values and two outliers: max - min is 1000, but the 3rd..97th percentiles are both 5.
    gt = np.full((1, 10, 10), 5.0)
    gt[0, 0, 0] = -500
    gt[0, 9, 9] = 500
    x = gt + 1
    with pytest.raises(DataError, match="data range is 0"):
        percentile_range_psnr(gt, x)
    with pytest.raises(DataError, match="data range is 0"):
        evaluate_video(gt, x)
    with pytest.raises(DataError, match="data range is 0"):
        percentile_range_psnr(np.full((2, 2, 2), 7), np.zeros((2, 2, 2)))


def test_complex_input_raises():
    with pytest.raises(DataError, match="expected real numbers"):
        snr_db(np.ones(3, dtype=complex), np.ones(3, dtype=complex))
