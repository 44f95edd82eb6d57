"""Training specs: strict, versioned pydantic models loaded from YAML (no torch here)."""

from ai4life_kit.config.io import load_spec, parse_spec, save_spec, spec_to_yaml
from ai4life_kit.config.spec import SELF_SUPERVISED, TrainingSpec

__all__ = ["SELF_SUPERVISED", "TrainingSpec", "load_spec", "parse_spec", "save_spec", "spec_to_yaml"]
