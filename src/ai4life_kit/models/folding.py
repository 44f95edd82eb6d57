"""Batch norm folded into the convolution before it, for inference.

In eval mode a batch norm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps) * w + b``,
so the convolution before it can absorb it: ``W' = W * s``, ``b' = (b - mean) * s + beta`` with
``s = w / sqrt(var + eps)``. The network then computes the same function (to float rounding, about
1e-7 of the output's range) with one pass over each feature map fewer: prediction measured 1.58x
faster at 1024 x 1024 in 2D and 1.25x on a 64 x 512 x 512 volume on the CPU
(``benchmarks/bench_predict_cpu.py``, mode ``fp32-unfolded``).

Only prediction uses it. Training needs the batch statistics, and packages ship the unfolded
weights: their state dict is the one the architecture file (``unet.py``) loads.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["fold_batch_norm"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _foldable(model: nn.Module) -> bool:
    return any(
        isinstance(a, _CONVS) and isinstance(b, _NORMS) and b.track_running_stats
        for seq in model.modules()
        if isinstance(seq, nn.Sequential)
        for a, b in zip(seq, list(seq)[1:], strict=False)
    )


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each ``Conv -> BatchNorm`` pair of an ``nn.Sequential`` fused.

    ``model`` itself is left as it is (it may be a live training model, or a predictor's model a
    caller loads other weights into). A model with nothing to fold, or a TorchScript module, is
    returned unchanged. The fused convolution takes the batch norm's place and an
    :class:`~torch.nn.Identity` the batch norm's, so indices in the ``Sequential`` stay the same.
    """
    if isinstance(model, torch.jit.ScriptModule) or not _foldable(model):
        return model
    folded = copy.deepcopy(model).eval()
    with torch.no_grad():
        for seq in folded.modules():
            if not isinstance(seq, nn.Sequential):
                continue
            for i in range(len(seq) - 1):
                conv, norm = seq[i], seq[i + 1]
                if isinstance(conv, _CONVS) and isinstance(norm, _NORMS) and norm.track_running_stats:
                    seq[i] = fuse_conv_bn_eval(conv, norm)
                    seq[i + 1] = nn.Identity()
    return folded
