"""Models: the U-Net (`unet.py`, torch only) and how a training spec builds one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ai4life_kit.models.unet import UNet, receptive_field_radius

if TYPE_CHECKING:
    from ai4life_kit.config import TrainingSpec

__all__ = ["UNet", "build_model", "halo_for_depth", "model_args", "receptive_field_radius"]


def halo_for_depth(depth: int) -> int:
    """Tile overlap / bioimage.io output halo: the receptive-field radius rounded up to ``2**depth``."""
    step = 2**depth
    return -(-receptive_field_radius(depth) // step) * step


def model_args(spec: TrainingSpec) -> dict:
    """Keyword arguments of :class:`UNet` for a spec (stored in every checkpoint)."""
    if spec.data.n_channels is None:
        raise ValueError("spec.data.n_channels must be known (it is filled in from the data)")
    return {
        "dims": spec.data.dims,
        "in_channels": spec.data.n_channels,
        "out_channels": spec.data.n_channels,
        "depth": spec.model.depth,
        "width": spec.model.width,
        "batch_norm": spec.model.batch_norm,
        "n2v2": spec.uses_n2v2_network,
        "residual": spec.model.residual,
    }


def build_model(spec: TrainingSpec) -> UNet:
    """The U-Net a spec describes."""
    return UNet(**model_args(spec))
