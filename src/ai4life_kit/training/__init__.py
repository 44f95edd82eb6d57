"""Training: the loop, checkpoints and resume, metrics and plots."""

from ai4life_kit.training.loop import is_run_dir, train

__all__ = ["is_run_dir", "train"]
