"""Rewrites of the PyTorch model that make its ONNX graph friendlier to deployment runtimes.

GroupNorm with one group (LowFormer's attention/MLP pre-norm) exports as a GroupNormalization or
InstanceNormalization pattern; TensorRT 10.16 computes GroupNormalization with one group wrongly
(NVIDIA/TensorRT issue 4756). We emit it as plain reductions instead: mean and variance over
(C, H, W), then the per-channel affine. Numerically identical, and every runtime computes it.
"""
from __future__ import annotations

import copy
from typing import List

import torch
from torch import nn


class ExplicitGroupNorm1(nn.Module):
    """GroupNorm(1, C) as reductions; same parameter names (weight, bias) as nn.GroupNorm."""

    def __init__(self, gn: nn.GroupNorm):
        super().__init__()
        self.weight = gn.weight
        self.bias = gn.bias
        self.eps = gn.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(1, x.dim())]
        mean = x.mean(dim=dims, keepdim=True)
        centered = x - mean
        var = (centered * centered).mean(dim=dims, keepdim=True)
        y = centered / torch.sqrt(var + self.eps)
        shape = [1, -1] + [1] * (x.dim() - 2)
        return y * self.weight.reshape(shape) + self.bias.reshape(shape)


def groupnorm1_paths(model: nn.Module) -> List[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.GroupNorm) and m.num_groups == 1 and m.affine]


def for_onnx(model: nn.Module) -> nn.Module:
    """A copy of `model` with every GroupNorm(1, C) replaced by ExplicitGroupNorm1 (names kept)."""
    model = copy.deepcopy(model).eval()
    for path in groupnorm1_paths(model):
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, child, ExplicitGroupNorm1(getattr(parent, child)))
    return model
