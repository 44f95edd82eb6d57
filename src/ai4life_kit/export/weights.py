"""Write the three weight formats of a package: state dict (+ architecture file), TorchScript, ONNX.

- ``pytorch_state_dict``: a pure state dict loadable with ``weights_only=True`` plus
  ``models/unet.py`` shipped verbatim (it imports only torch).
- ``torchscript``: ``torch.jit.script`` (ilastik and deepImageJ run this format).
- ``onnx``: the legacy exporter (``dynamo=False``), opset 17, one file, dynamic batch and
  spatial axes (the dynamo exporter writes opset 18 and a separate ``.onnx.data`` file that
  deepImageJ never downloads).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from ai4life_kit.errors import Ai4LifeKitError

__all__ = [
    "ONNX_OPSET",
    "architecture_file",
    "write_state_dict",
    "write_architecture",
    "export_torchscript",
    "export_onnx",
]

ONNX_OPSET = 17


def architecture_file() -> Path:
    """The self-contained U-Net source file shipped as the architecture."""
    from ai4life_kit.models import unet

    return Path(unet.__file__)


def write_architecture(path: Path) -> Path:
    """Copy ``models/unet.py`` verbatim to ``path``."""
    shutil.copyfile(architecture_file(), path)
    return path


def write_state_dict(state: dict[str, Any], path: Path) -> Path:
    """Save a pure state dict (tensors only, CPU, contiguous)."""
    clean = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    torch.save(clean, path)
    return path


def export_torchscript(model: torch.nn.Module, path: Path) -> Path:
    """Script ``model`` and save it; scripting keeps every input size valid."""
    model = model.eval()
    try:
        with warnings.catch_warnings():
            # torch.jit is deprecated in recent torch but is what ilastik and deepImageJ load.
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(model)
        scripted.save(str(path))
    except Exception as exc:
        raise Ai4LifeKitError(f"TorchScript export failed: {type(exc).__name__}: {exc}") from exc
    return path


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


def _onnx_friendly(model: torch.nn.Module) -> torch.nn.Module:
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
    model = _onnx_friendly(model).eval()
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
