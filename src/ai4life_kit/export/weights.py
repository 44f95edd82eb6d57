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
from ai4life_kit.models.onnx import ONNX_OPSET, export_onnx

__all__ = [
    "ONNX_OPSET",
    "architecture_file",
    "write_state_dict",
    "write_architecture",
    "export_torchscript",
    "export_onnx",
]


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
