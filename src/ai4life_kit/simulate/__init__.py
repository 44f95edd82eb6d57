"""Synthetic fluorescence images with a known ground truth (:mod:`.images`), and datasets on disk (:mod:`.dataset`).

Two-photon calcium-imaging videos of neurons, and datasets of them, are in :mod:`.calcium`.
"""

from ai4life_kit.simulate.calcium import (
    CALCIUM_AXES,
    CalciumVideo,
    calcium_kernel,
    parse_video_shape,
    simulate_calcium,
    simulate_calcium_dataset,
)
from ai4life_kit.simulate.dataset import MARKER_FILE, MIN_SIDE, simulate_dataset
from ai4life_kit.simulate.images import (
    DEFAULT_OFFSET,
    ROW_NOISE_WIDTH,
    STRUCTURED_NOISE,
    add_noise,
    column_pattern,
    parse_shape,
    simulate_ground_truth,
    structured_noise_std,
)

__all__ = [
    "CALCIUM_AXES",
    "CalciumVideo",
    "DEFAULT_OFFSET",
    "MARKER_FILE",
    "MIN_SIDE",
    "ROW_NOISE_WIDTH",
    "STRUCTURED_NOISE",
    "add_noise",
    "calcium_kernel",
    "column_pattern",
    "parse_shape",
    "parse_video_shape",
    "simulate_calcium",
    "simulate_calcium_dataset",
    "simulate_dataset",
    "simulate_ground_truth",
    "structured_noise_std",
]
