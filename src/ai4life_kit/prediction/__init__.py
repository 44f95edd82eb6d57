"""Prediction: tiled inference with a halo, from a run directory or a bioimage.io package."""

from ai4life_kit.prediction.predictor import Predictor

__all__ = ["Predictor"]
