"""The U-Net as ONNX: opset 17, one file, dynamic batch and spatial axes (torch only).

The legacy exporter (``dynamo=False``): the dynamo exporter writes opset 18 and a separate
``.onnx.data`` file that deepImageJ never downloads. Used for a package's ``onnx`` weights
(:mod:`ai4life_kit.export.weights`) and for ``predict --engine onnx``
(:mod:`ai4life_kit.prediction.onnx_engine`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ai4life_kit.errors import Ai4LifeKitError

__all__ = ["ONNX_OPSET", "export_onnx", "onnx_friendly"]

ONNX_OPSET = 17


class _OnnxMaxBlurPool(torch.nn.Module):
    """Same maths as ``MaxBlurPool``, written so that the ONNX exporter sees a fixed conv kernel.

    ``MaxBlurPool`` blurs with a grouped convolution whose weight is expanded to the (traced,
    hence dynamic) channel count, which the legacy ONNX exporter cannot export ("convolution
    for kernel of unknown shape"). Folding the channels into the batch and convolving with the
    one-channel kernel gives identical results with a constant weight.
    """

    def __init__(self, pool: torch.nn.Module) -> None:
        super().__init__()
        self.dims = int(pool.dims)
        self.register_buffer("kernel", pool.kernel.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional as F

        n, c = x.shape[0], x.shape[1]
        if self.dims == 2:
            x = F.max_pool2d(x, kernel_size=2, stride=1)
            y = F.conv2d(x.reshape((n * c, 1) + x.shape[2:]), self.kernel.to(x.dtype), stride=2, padding=1)
        else:
            x = F.max_pool3d(x, kernel_size=2, stride=1)
            y = F.conv3d(x.reshape((n * c, 1) + x.shape[2:]), self.kernel.to(x.dtype), stride=2, padding=1)
        return y.reshape((n, c) + y.shape[2:])


def onnx_friendly(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every ``MaxBlurPool`` replaced by :class:`_OnnxMaxBlurPool`."""
    import copy

    from ai4life_kit.models.unet import MaxBlurPool

    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, MaxBlurPool):
                setattr(module, child_name, _OnnxMaxBlurPool(child))
    return model


def export_onnx(model: torch.nn.Module, path: Path, example: torch.Tensor) -> Path:
    """Export to a single ONNX file, opset 17, with dynamic batch and spatial axes."""
    spatial = ["z", "y", "x"][-(example.ndim - 2) :]
    dynamic = {0: "batch", **{i + 2: name for i, name in enumerate(spatial)}}
    model = onnx_friendly(model).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": dynamic, "output": dynamic},
                do_constant_folding=True,
                external_data=False,
            )
    except Exception as exc:
        raise Ai4LifeKitError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    extra = [p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path]
    if extra:
        raise Ai4LifeKitError(f"ONNX export wrote extra files {extra}; packages need a single .onnx file")
    return path
