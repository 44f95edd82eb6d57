"""Models: the U-Net (`unet.py`, torch only) and how a training spec builds one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ai4life_kit.models.unet import UNet, receptive_field_radius

if TYPE_CHECKING:
    from ai4life_kit.config import TrainingSpec

__all__ = ["UNet", "build_model", "halo_for_depth", "model_args", "receptive_field_radius", "round_up"]


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (tile sizes and halos of a ``2**depth`` U-Net)."""
    return -(-int(value) // multiple) * multiple


def halo_for_depth(depth: int, radius: int | None = None) -> int:
    """Tile overlap / bioimage.io output halo: ``radius`` (default: the receptive field's) rounded up to ``2**depth``.

    The one place halos are rounded: the predictor, the tile grid and the package's output halo
    must agree, or tiles would be cut where the package says they are not.
    """
    return round_up(receptive_field_radius(depth) if radius is None else radius, 2**depth)


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
        # only when set: the arguments of every other checkpoint and package stay as they were
        **({"probabilistic": True} if spec.is_probabilistic else {}),
    }


def build_model(spec: TrainingSpec) -> UNet:
    """The U-Net a spec describes."""
    return UNet(**model_args(spec))
