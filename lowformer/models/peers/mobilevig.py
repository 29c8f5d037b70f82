"""MobileViG: "Graph-Based Sparse Attention for Mobile Vision Applications" (Munir et al., CVPRW 2023).

timm-style rewrite from the paper and the official code (github.com/SLDGroup/MobileViG), keeping
its state_dict keys and shapes so the official checkpoints load. The network is a CNN (inverted
residual stages) followed by a stage of Sparse Vision Graph Attention (SVGA) blocks.

SVGA's graph is fixed, not k-NN: node (h, w) is connected to itself, to the nodes K, 2K, ... rows
above it (wrapping around) and to the nodes K, 2K, ... columns to its left. Max-relative graph
convolution (MRConv) takes x_j = max over neighbours n of (x - x_n) and mixes [x, x_j] with a 1x1
conv. The shifts are `torch.roll`s (Slice + Concat in ONNX), unrolled for the fixed feature size.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath
from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models._registry import generate_default_cfgs
from torch import nn

__all__ = ["MobileViG", "MRConv4d", "PUBLISHED"]

_logger = logging.getLogger(__name__)

# Paper, ImageNet-1K comparison table (224x224): params in M and GMACs, printed to one decimal. Both
# come from the repo's profiler (util/profile.py), which counts conv weights (+ weight.size(1) per conv)
# but no BatchNorm or layer scale, so our total params are 0.5-1.4% higher (M: +0.5%); its MACs are
# convs plus GELUs, our FlopCounterMode count is convs only (GELUs are a negligible share).
PUBLISHED: Dict[str, Dict[str, float]] = {
    "mobilevig_ti": {"params_m": 5.2, "gmacs": 0.7},
    "mobilevig_s": {"params_m": 7.2, "gmacs": 1.0},
    "mobilevig_m": {"params_m": 14.0, "gmacs": 1.5},
    "mobilevig_b": {"params_m": 26.7, "gmacs": 2.8},
}


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1) -> nn.Sequential:
    """Conv + BatchNorm as an indexable Sequential (keys `.0`, `.1` as in the official code)."""
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=kernel_size // 2),
                         nn.BatchNorm2d(out_chs))


class Stem(nn.Module):
    """Two stride-2 3x3 conv-BN-GELU layers (official keys `stem.stem.{0,1,3,4}`)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chs, out_chs // 2, 3, stride=2, padding=1), nn.BatchNorm2d(out_chs // 2), nn.GELU(),
            nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1), nn.BatchNorm2d(out_chs), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


class InvertedMlp(nn.Module):
    """1x1 expand -> BN -> GELU -> 3x3 depthwise -> BN -> GELU -> 1x1 project -> BN."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.) -> None:
        super().__init__()
        # Registration order follows the official module so state_dict() lists keys identically.
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop = nn.Dropout(drop)
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.mid_norm = nn.BatchNorm2d(hidden)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.fc1(x)))
        x = self.drop(self.act(self.mid_norm(self.mid(x))))
        return self.drop(self.norm2(self.fc2(x)))


class InvertedResidual(nn.Module):
    """x + drop_path(layer_scale * mlp(x)): the local (CNN) block."""

    def __init__(self, dim: int, mlp_ratio: float = 4., drop: float = 0., drop_path: float = 0.,
                 layer_scale_init: float = 1e-5) -> None:
        super().__init__()
        self.mlp = InvertedMlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.layer_scale_2 = nn.Parameter(layer_scale_init * torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.layer_scale_2 * self.mlp(x))


class MRConv4d(nn.Module):
    """Max-relative graph conv over SVGA's fixed sparse graph on a (B, C, H, W) map."""

    def __init__(self, in_chs: int, out_chs: int, k: int = 2) -> None:
        super().__init__()
        # BatchNorm over in_chs * 2 as in the official code (out_chs is always 2 * in_chs there).
        self.nn = nn.Sequential(nn.Conv2d(in_chs * 2, out_chs, 1), nn.BatchNorm2d(in_chs * 2), nn.GELU())
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        # The self-loop contributes x - x = 0, so the running max starts at zero.
        x_j = torch.zeros_like(x)
        for i in range(self.k, H, self.k):
            x_j = torch.maximum(x_j, x - torch.roll(x, shifts=i, dims=2))
        for i in range(self.k, W, self.k):
            x_j = torch.maximum(x_j, x - torch.roll(x, shifts=i, dims=3))
        return self.nn(torch.cat([x, x_j], dim=1))


class Grapher(nn.Module):
    """SVGA token mixer: x + fc2(MRConv(fc1(x)))."""

    def __init__(self, dim: int, drop_path: float = 0., k: int = 2) -> None:
        super().__init__()
        self.fc1 = _conv_bn(dim, dim)
        self.graph_conv = MRConv4d(dim, dim * 2, k)
        self.fc2 = _conv_bn(dim * 2, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.fc2(self.graph_conv(self.fc1(x))))


class FFN(nn.Module):
    """x + fc2(GELU(fc1(x))), each fc a 1x1 conv + BN."""

    def __init__(self, dim: int, hidden: int, drop_path: float = 0.) -> None:
        super().__init__()
        self.fc1 = _conv_bn(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = _conv_bn(hidden, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.fc2(self.act(self.fc1(x))))


class Downsample(nn.Module):
    """Stride-2 3x3 conv + BN (official keys `.conv.0`, `.conv.1`)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = _conv_bn(in_chs, out_chs, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MobileViG(nn.Module):
    """MobileViG with its DeiT-style distillation head.

    In eval mode (and in training unless `set_distilled_training(True)`) the output is the mean of
    the class and distillation heads, as the official model returns at inference.
    """

    def __init__(
            self,
            local_blocks: Sequence[int] = (3, 3, 9),
            local_channels: Sequence[int] = (42, 84, 224),
            global_blocks: Sequence[int] = (3,),
            global_channels: Sequence[int] = (400,),
            emb_dims: int = 768,
            k: int = 2,
            num_classes: int = 1000,
            in_chans: int = 3,
            distillation: bool = True,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_features = global_channels[-1]
        self.head_hidden_size = emb_dims
        self.distilled_training = False
        n_blocks = sum(local_blocks) + sum(global_blocks)
        dpr = iter([x.item() for x in torch.linspace(0, drop_path_rate, n_blocks)])

        self.stem = Stem(in_chans, local_channels[0])
        # Flat lists with downsamplings interleaved, so the indices match the official keys.
        local: List[nn.Module] = []
        for i, (n, c) in enumerate(zip(local_blocks, local_channels)):
            if i > 0:
                local.append(Downsample(local_channels[i - 1], c))
            local += [InvertedResidual(c, 4., drop_path=next(dpr)) for _ in range(n)]
        local.append(Downsample(local_channels[-1], global_channels[0]))
        self.local_backbone = nn.Sequential(*local)

        blocks: List[nn.Module] = []
        for i, (n, c) in enumerate(zip(global_blocks, global_channels)):
            if i > 0:
                blocks.append(Downsample(global_channels[i - 1], c))
            for _ in range(n):
                p = next(dpr)
                blocks.append(nn.Sequential(Grapher(c, p, k), FFN(c, c * 4, p)))
        self.backbone = nn.Sequential(*blocks)

        self.prediction = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(global_channels[-1], emb_dims, 1),
                                        nn.BatchNorm2d(emb_dims), nn.GELU(), nn.Dropout(drop_rate))
        self.distillation = distillation
        self.head = self._make_head(num_classes)
        self.dist_head = self._make_head(num_classes) if distillation else None
        self._init_weights()

    def _make_head(self, num_classes: int) -> nn.Module:
        return nn.Conv2d(self.head_hidden_size, num_classes, 1) if num_classes > 0 else nn.Identity()

    def _init_weights(self) -> None:
        # Official init: Kaiming-normal conv weights, zero conv biases.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        self.distilled_training = enable

    @torch.jit.ignore
    def get_classifier(self) -> Union[nn.Module, Tuple[nn.Module, nn.Module]]:
        return self.head if self.dist_head is None else (self.head, self.dist_head)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)
        if self.dist_head is not None:
            self.dist_head = self._make_head(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.local_backbone(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.prediction(x)
        if pre_logits:
            return x.flatten(1)
        y = self.head(x).flatten(1)
        if self.dist_head is None:
            return y
        y_dist = self.dist_head(x).flatten(1)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            # Both heads for the distillation loss (timm DeiT convention).
            return y, y_dist
        return (y + y_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # Official cfg and eval transform: resize 224 / 0.9 bicubic, centre crop 224, ImageNet mean/std.
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.9, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.stem.0", "classifier": ("head", "dist_head"),
        "paper_ids": "arXiv:2307.00395",
        "paper_name": "MobileViG: Graph-Based Sparse Attention for Mobile Vision Applications",
        "origin_url": "https://github.com/SLDGroup/MobileViG",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "mobilevig_ti": _cfg(),
    "mobilevig_s": _cfg(),
    "mobilevig_m": _cfg(),
    "mobilevig_b": _cfg(),
})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> MobileViG:
    return build_model_with_cfg(MobileViG, variant, pretrained, **kwargs)


@register_model
def mobilevig_ti(pretrained: bool = False, **kwargs: Any) -> MobileViG:
    args = dict(local_blocks=(2, 2, 6), local_channels=(42, 84, 168), global_blocks=(2,),
                global_channels=(256,), emb_dims=512)
    return _create("mobilevig_ti", pretrained, **dict(args, **kwargs))


@register_model
def mobilevig_s(pretrained: bool = False, **kwargs: Any) -> MobileViG:
    args = dict(local_blocks=(3, 3, 9), local_channels=(42, 84, 176), global_blocks=(3,),
                global_channels=(256,), emb_dims=512)
    return _create("mobilevig_s", pretrained, **dict(args, **kwargs))


@register_model
def mobilevig_m(pretrained: bool = False, **kwargs: Any) -> MobileViG:
    args = dict(local_blocks=(3, 3, 9), local_channels=(42, 84, 224), global_blocks=(3,),
                global_channels=(400,), emb_dims=768)
    return _create("mobilevig_m", pretrained, **dict(args, **kwargs))


@register_model
def mobilevig_b(pretrained: bool = False, **kwargs: Any) -> MobileViG:
    args = dict(local_blocks=(5, 5, 15), local_channels=(42, 84, 240), global_blocks=(5,),
                global_channels=(464,), emb_dims=768)
    return _create("mobilevig_b", pretrained, **dict(args, **kwargs))
