"""Checkpoints: atomic saves, ``weights_only`` loads."""

from __future__ import annotations

from pathlib import Path

import torch

from ai4life_kit.fileio import atomic_path

__all__ = ["save_checkpoint"]


def save_checkpoint(state: dict, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a kill at any moment leaves the old file intact."""
    with atomic_path(Path(path)) as tmp:
        torch.save(state, tmp)
