"""Prediction: tiled inference with a halo, from a run directory, an ensemble or a bioimage.io package."""

from ai4life_kit.prediction.ensemble import EnsemblePredictor, load_model
from ai4life_kit.prediction.predictor import Predictor
from ai4life_kit.prediction.restoration import RestorationPredictor

__all__ = ["EnsemblePredictor", "Predictor", "RestorationPredictor", "load_model"]
