"""``predict --engine onnx``: the same tiles and batches through ONNX Runtime on the CPU.

Measured in ``benchmarks/bench_predict_cpu.py`` (2 cores, torch 2.13, onnxruntime 1.32): 2.0x
torch's fp32 MPix/s on 2D tiles, but 0.65x on 3D volumes, with a PSNR change below 1e-6 dB. It is
an option, not the default:
onnxruntime is an optional dependency (``pip install 'ai4life-kit[bioimageio]'``, not in the
challenge image), and exporting the network costs a few seconds per model.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ai4life_kit.errors import UserInputError
from ai4life_kit.models.onnx import export_onnx

__all__ = ["ENGINES", "onnx_forward"]

ENGINES = ("torch", "onnx")


def onnx_forward(model: torch.nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` exported to ONNX and run by ONNX Runtime on the CPU, as a tensor-to-tensor function.

    ``example`` is one valid input to trace with (the batch and spatial axes stay dynamic);
    ``model`` itself is left as it is (a copy is exported). ONNX Runtime gets torch's thread
    count, so ``OMP_NUM_THREADS`` limits both alike.

    Raises
    ------
    UserInputError
        onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserInputError(
            "--engine onnx needs onnxruntime: pip install 'ai4life-kit[bioimageio]' (or onnxruntime)"
        ) from None
    with tempfile.TemporaryDirectory(prefix="ai4life-kit-onnx-") as tmp:
        cpu_model = copy.deepcopy(model).float().cpu().eval()
        path = export_onnx(cpu_model, Path(tmp) / "model.onnx", example.float().cpu())
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # The session holds the model in memory: the file can go with the folder.
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(x: torch.Tensor) -> torch.Tensor:
        (y,) = session.run(None, {"input": np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})
        return torch.from_numpy(y)

    return forward
