"""Rewrites of the PyTorch model that make its ONNX graph friendlier to deployment runtimes.

GroupNorm with one group (LowFormer's attention/MLP pre-norm) exports as a GroupNormalization or
InstanceNormalization pattern; TensorRT 10.16 computes GroupNormalization with one group wrongly
(NVIDIA/TensorRT issue 4756). We emit it as plain reductions instead: mean and variance over
(C, H, W), then the per-channel affine. Numerically identical, and every runtime computes it.

ConvTranspose (LowFormer's attention upsampling: k3 s1 p1 in stage 4, k4 s2 p1 in stage 3) becomes a
Conv followed by PixelShuffle (DepthToSpace): the same function, but ONNX Runtime's CPU ConvTranspose
has no INT8 kernel at all (microsoft/onnxruntime issue 8988) and a slower FP32 one (col2im), while
Conv runs on the fast FP32 and INT8 GEMM kernels.
"""
from __future__ import annotations

import copy
from typing import Callable, List

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


class ConvTransposeAsConv(nn.Module):
    """A ConvTranspose2d with kernel - 2 * padding == stride as Conv2d + PixelShuffle(stride).

    Output pixel (s*q + r) of a transposed convolution sums input pixels q + d for a few offsets d
    with taps t of the kernel: for each phase r, t = (r + p) % s + s*j and d = (r + p) // s - j.
    So one Conv2d over the input, with C_out * s * s output channels (one per channel and phase)
    and a kernel spanning all offsets, followed by PixelShuffle(s), computes it exactly."""

    def __init__(self, ct: nn.ConvTranspose2d):
        super().__init__()
        (s, _), (k, _), (p, _) = ct.stride, ct.kernel_size, ct.padding
        c_in, c_out = ct.in_channels, ct.out_channels
        taps = [[((r + p) % s + s * j, (r + p) // s - j) for j in range(k // s)] for r in range(s)]
        reach = max(abs(d) for phase in taps for _, d in phase)
        weight = ct.weight.new_zeros(c_out, s, s, c_in, 2 * reach + 1, 2 * reach + 1)
        w = ct.weight.detach()  # (c_in, c_out, k, k)
        for rh in range(s):
            for th, dh in taps[rh]:
                for rw in range(s):
                    for tw, dw in taps[rw]:
                        weight[:, rh, rw, :, dh + reach, dw + reach] = w[:, :, th, tw].t()
        self.conv = nn.Conv2d(c_in, c_out * s * s, 2 * reach + 1, padding=reach, bias=ct.bias is not None)
        self.conv.weight = nn.Parameter(weight.reshape(c_out * s * s, c_in, 2 * reach + 1, 2 * reach + 1))
        if ct.bias is not None:
            self.conv.bias = nn.Parameter(ct.bias.detach().repeat_interleave(s * s))
        self.shuffle = nn.PixelShuffle(s) if s > 1 else nn.Identity()

    @staticmethod
    def applies(m: nn.Module) -> bool:
        if type(m) is not nn.ConvTranspose2d:
            return False
        (sh, sw), (kh, kw), (ph, pw) = m.stride, m.kernel_size, m.padding
        return (sh == sw and kh == kw and ph == pw and m.groups == 1 and m.dilation == (1, 1)
                and m.output_padding == (0, 0) and m.padding_mode == "zeros" and kh - 2 * ph == sh and kh % sh == 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


def groupnorm1_paths(model: nn.Module) -> List[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.GroupNorm) and m.num_groups == 1 and m.affine]


def _replace(model: nn.Module, paths: List[str], make: Callable[[nn.Module], nn.Module]) -> None:
    for path in paths:
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, child, make(getattr(parent, child)))


def for_onnx(model: nn.Module) -> nn.Module:
    """A copy of `model` with every GroupNorm(1, C) replaced by ExplicitGroupNorm1 and every
    ConvTranspose2d that allows it by ConvTransposeAsConv (module names kept)."""
    model = copy.deepcopy(model).eval()
    _replace(model, groupnorm1_paths(model), ExplicitGroupNorm1)
    with torch.no_grad():
        _replace(model, [n for n, m in model.named_modules() if ConvTransposeAsConv.applies(m)], ConvTransposeAsConv)
    return model
