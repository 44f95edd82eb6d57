"""Synthetic fluorescence images with a known ground truth (:mod:`.images`), and datasets on disk (:mod:`.dataset`)."""

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
    "DEFAULT_OFFSET",
    "MARKER_FILE",
    "MIN_SIDE",
    "ROW_NOISE_WIDTH",
    "STRUCTURED_NOISE",
    "add_noise",
    "column_pattern",
    "parse_shape",
    "simulate_dataset",
    "simulate_ground_truth",
    "structured_noise_std",
]
