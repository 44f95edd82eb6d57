"""A 2D/3D U-Net for denoising, including the N2V2 variant.

This file is deliberately self-contained: it imports only ``torch`` so that it can be shipped
verbatim as the architecture file of a bioimage.io ``pytorch_state_dict`` package and loaded
by consumers that do not have ai4life-kit installed. It knows nothing about configs.

The layout follows the CAREamics / n2v U-Net so that sizes compare like for like: per level a
block of two 3x3 convolutions (+ batch norm) + ReLU, channels doubling with depth, a bottleneck
with doubled intermediate width, bilinear/trilinear up-sampling, concatenated skips and a
final 1x1 convolution. N2V2 (Hoeck et al. 2022) swaps max pooling for max-blur pooling and
drops the top skip connection, which removes the checkerboard artefacts of plain N2V.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet", "IsotropicUNet", "Upsample2x", "receptive_field_radius", "SCALE_FLOOR"]

# Smallest Laplace scale a probabilistic U-Net predicts (normalised units): keeps the NLL's
# |y - mu| / scale finite where the network becomes very sure.
SCALE_FLOOR = 1e-3


def receptive_field_radius(depth: int) -> int:
    """Upper bound, in pixels, of how far an output pixel can see into the input.

    Per encoder/decoder level ``i`` (scale ``2**i``): two 3x3 convolutions on each side
    (``4 * 2**i``), pooling (at most ``2 * 2**i`` for max-blur pooling) and up-sampling
    (at most ``2**(i+1)``); the bottleneck adds ``2 * 2**depth``. The test suite checks this
    bound against the measured gradient support of real networks.
    """
    return 8 * (2**depth - 1) + 2 ** (depth + 1)


def _conv(dims: int, cin: int, cout: int, kernel: int) -> nn.Module:
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    return conv(cin, cout, kernel_size=kernel, padding=kernel // 2)


class ConvBlock(nn.Module):
    """Two 3x3(x3) convolutions, each followed by optional batch norm and ReLU."""

    def __init__(self, dims: int, cin: int, cout: int, mid: int, batch_norm: bool) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        layers: list[nn.Module] = [_conv(dims, cin, mid, 3)]
        if batch_norm:
            layers.append(norm(mid))
        layers += [nn.ReLU(inplace=True), _conv(dims, mid, cout, 3)]
        if batch_norm:
            layers.append(norm(cout))
        layers.append(nn.ReLU(inplace=True))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class MaxBlurPool(nn.Module):
    """Max pooling with stride 1, then a [1, 2, 1] binomial blur with stride 2 (anti-aliased)."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.dims = dims
        k1 = torch.tensor([1.0, 2.0, 1.0]) / 4.0
        kernel = k1[:, None] * k1[None, :] if dims == 2 else k1[:, None, None] * k1[None, :, None] * k1[None, None, :]
        # Not persistent: the state dict stays a pure set of learned weights.
        self.register_buffer("kernel", kernel[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        if self.dims == 2:
            x = F.max_pool2d(x, kernel_size=2, stride=1)
            weight = self.kernel.to(x.dtype).expand(channels, 1, 3, 3)
            return F.conv2d(x, weight, stride=2, padding=1, groups=channels)
        x = F.max_pool3d(x, kernel_size=2, stride=1)
        weight = self.kernel.to(x.dtype).expand(channels, 1, 3, 3, 3)
        return F.conv3d(x, weight, stride=2, padding=1, groups=channels)


class Upsample2x(nn.Module):
    """Bilinear (2D) or trilinear (3D) up-sampling by 2, ``align_corners=False``.

    The same arithmetic as ``nn.Upsample(scale_factor=2.0, mode="bilinear")``, but it calls the one
    ATen operator directly: scripting ``nn.Upsample`` compiles every branch of ``F.interpolate``,
    including operators added long after torch 2.0 (``aten::_upsample_lanczos2d_aa``), so the
    TorchScript file would not load in deepImageJ's libtorch 2.0 or in bioimage.io's torch 2.5.
    """

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 2:
            return torch.ops.aten.upsample_bilinear2d(x, None, False, [2.0, 2.0])
        return torch.ops.aten.upsample_trilinear3d(x, None, False, [2.0, 2.0, 2.0])


class UNet(nn.Module):
    """U-Net mapping ``(B, in_channels, [Z,] Y, X)`` to ``(B, out_channels, [Z,] Y, X)``.

    Spatial sizes must be multiples of ``2**depth``.

    Parameters
    ----------
    dims
        2 or 3 spatial dimensions.
    in_channels, out_channels
        Number of image channels in and out.
    depth
        Number of down-sampling steps.
    width
        Channels of the first level (doubled at each level).
    batch_norm
        Batch normalisation after each convolution.
    n2v2
        Max-blur pooling and no top skip connection (N2V2).
    residual
        Add the input to the output (requires ``in_channels == out_channels``).
    probabilistic
        Also predict, per pixel and channel, the scale of a Laplace distribution around the
        output (probabilistic CARE, Weigert et al. 2018): the output has ``2 * out_channels``
        channels, the means first, then the scales (softplus plus :data:`SCALE_FLOOR`, so always
        positive). The residual, if any, is added to the means only.
    upsample_factor
        Super-resolution (2D): interpolate the input bilinearly by this factor in Y and X first
        (``align_corners=False``), so the output is ``upsample_factor`` times larger. Training
        feeds already interpolated inputs to the same network with factor 1; packages set it, so
        that consumers give the network the low-resolution image. No weights of its own.
    """

    def __init__(
        self,
        dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 2,
        width: int = 32,
        batch_norm: bool = True,
        n2v2: bool = False,
        residual: bool = False,
        probabilistic: bool = False,
        upsample_factor: int = 1,
    ) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        if residual and in_channels != out_channels:
            raise ValueError("a residual U-Net needs in_channels == out_channels")
        if upsample_factor < 1 or (upsample_factor > 1 and dims != 2):
            raise ValueError(f"upsample_factor must be >= 1 and needs dims 2, got {upsample_factor} with dims {dims}")
        self.dims = dims
        self.upsample_factor = float(upsample_factor)
        self.depth = depth
        self.n2v2 = n2v2
        self.residual = residual
        self.probabilistic = probabilistic
        self.out_channels = out_channels
        self.scale_floor = SCALE_FLOOR  # an attribute, not the global: TorchScript reads no globals
        self.pool: nn.Module = MaxBlurPool(dims) if n2v2 else (nn.MaxPool2d(2) if dims == 2 else nn.MaxPool3d(2))
        self.upsample = Upsample2x(dims)

        encoders = []
        cin = in_channels
        for level in range(depth):
            cout = width * 2**level
            encoders.append(ConvBlock(dims, cin, cout, cout, batch_norm))
            cin = cout
        self.encoders = nn.ModuleList(encoders)
        self.bottleneck = ConvBlock(dims, cin, cin, 2 * cin, batch_norm)

        decoders = []
        for level in reversed(range(depth)):
            # Up-sampled features arrive with width * 2**level channels at every level; the
            # top decoder keeps `width` channels, the others halve them (as CAREamics does).
            channels = width * 2**level
            skip = 0 if (n2v2 and level == 0) else channels
            cout = channels // 2 if level > 0 else channels
            decoders.append(ConvBlock(dims, channels + skip, cout, channels, batch_norm))
        self.decoders = nn.ModuleList(decoders)
        self.head = _conv(dims, width, out_channels * (2 if probabilistic else 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.restore(x)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """The network itself (``forward``; :class:`IsotropicUNet` runs it on slices)."""
        if self.upsample_factor > 1.0:
            f = self.upsample_factor
            x = torch.ops.aten.upsample_bilinear2d(x, None, False, [f, f])
        skips: list[torch.Tensor] = []
        h = x
        for encoder in self.encoders:
            h = encoder(h)
            skips.append(h)
            h = self.pool(h)
        h = self.bottleneck(h)
        n = len(skips)
        for i, decoder in enumerate(self.decoders):
            h = self.upsample(h)
            if not (self.n2v2 and i == n - 1):
                h = torch.cat([h, skips[n - 1 - i]], dim=1)
            h = decoder(h)
        out = self.head(h)
        if self.probabilistic:
            mean, scale = out[:, : self.out_channels], out[:, self.out_channels :]
            if self.residual:
                mean = mean + x
            return torch.cat([mean, F.softplus(scale) + self.scale_floor], dim=1)
        if self.residual:
            out = out + x
        return out


class IsotropicUNet(UNet):
    """Isotropic reconstruction of ``(B, C, Z, Y, X)`` volumes with a 2D :class:`UNet` (CARE).

    The volume is interpolated linearly along Z to ``factor * Z`` planes (input plane ``z`` at
    output plane ``z * factor``; past the last plane it is held, so the last ``factor - 1``
    planes lie beyond the acquired volume), the 2D network restores every XZ and every YZ slice
    (the axial axis first, as in training) and the output is the mean of the two. ``factor * Z``
    rather than ``(Z - 1) * factor + 1`` planes: bioimage.io sizes an output axis as a multiple of
    the input's, and Z blocks of that grid meet without gaps.

    Parameters
    ----------
    factor
        Axial step over lateral pixel size (the anisotropy): the output has ``factor`` times the
        input's Z planes.
    slice_batch
        Slices per network call (bounds the memory of large tiles); 0: all in one call.
    **unet
        The 2D network's arguments (see :class:`UNet`; ``dims`` must be 2). Same weights, same
        state-dict keys as the 2D network's.
    """

    def __init__(self, factor: int = 4, slice_batch: int = 8, **unet) -> None:
        if int(unet.get("dims", 2)) != 2:
            raise ValueError("IsotropicUNet restores volumes with a 2D network: dims must be 2")
        if unet.get("probabilistic"):
            raise ValueError("IsotropicUNet averages two restorations: a probabilistic network's scales cannot be")
        if int(factor) < 2:
            raise ValueError(f"factor must be at least 2, got {factor}")
        super().__init__(**unet)
        self.factor = int(factor)
        self.slice_batch = int(slice_batch)

    def upsample_z(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, Z, Y, X)`` -> ``(B, C, factor Z, Y, X)``: linear along Z, the last plane held."""
        following = torch.cat([x[:, :, 1:], x[:, :, -1:]], dim=2)
        planes: list[torch.Tensor] = []
        for k in range(self.factor):
            w = float(k) / float(self.factor)
            planes.append((1.0 - w) * x + w * following)
        b, c, z, ny, nx = x.shape
        return torch.stack(planes, dim=3).reshape(b, c, z * self.factor, ny, nx)

    def restore_slices(self, s: torch.Tensor) -> torch.Tensor:
        """The 2D network on a batch of slices, ``slice_batch`` at a time."""
        n = s.shape[0]
        if self.slice_batch <= 0 or n <= self.slice_batch:
            return self.restore(s)
        parts: list[torch.Tensor] = []
        for start in range(0, n, self.slice_batch):
            parts.append(self.restore(s[start : start + self.slice_batch]))
        return torch.cat(parts, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fine = self.upsample_z(x)
        b, c, zz, ny, nx = fine.shape
        # XZ slices: one per (B, Y), each (Z', X); YZ slices: one per (B, X), each (Z', Y)
        xz = self.restore_slices(fine.permute(0, 3, 1, 2, 4).reshape(b * ny, c, zz, nx))
        xz = xz.reshape(b, ny, xz.shape[1], zz, nx).permute(0, 2, 3, 1, 4)
        yz = self.restore_slices(fine.permute(0, 4, 1, 2, 3).reshape(b * nx, c, zz, ny))
        yz = yz.reshape(b, nx, yz.shape[1], zz, ny).permute(0, 2, 3, 4, 1)
        return (xz + yz) * 0.5
