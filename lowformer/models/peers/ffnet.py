"""FFNet, written in timm's style.

Yun, Lee and Ro, "FFNet: MetaMixer-based Efficient Convolutional Mixer Design" (arXiv 2406.02021).
Architecture and parameter names follow the authors' code (ysj9909/FFNet, models/ffnet.py) so its
checkpoints load unchanged.

FFNet is a pure ConvNet built from the MetaMixer view of a transformer block: the token mixer
("FFNified attention") is 1x1 conv -> large-kernel dw conv -> GELU -> large-kernel dw conv, and the channel
mixer is dw conv -> 1x1 expand -> GELU -> 1x1 project. The 7x7 dw convs are RepVGG-style (a parallel 3x3
branch, both with BN) and fold into one conv for inference: `timm.models.reparameterize_model(model)` calls
the `fuse()` methods below.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, SqueezeExcite, trunc_normal_
from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models._registry import generate_default_cfgs

__all__ = ["FFNet", "PUBLISHED"]

# Paper's ImageNet-1K table, as repeated in the official README: params in M, FLOPs in G (= MACs), at 256x256
# (FFNet-3 also at 384: 22.8 G; FFNet-4 is published at 384 only). These count the re-parameterized (fused)
# network. Fused, the official code comes to 13.66M / 2.985 G, 26.91M / 6.003 G, 48.33M / 10.146 G (22.828 G
# at 384) and 79.20M / 43.122 G (384): all within 0.5% of the table except FFNet-1's MACs, printed 2.9 G,
# 2.9% under the code's 2.985 G (3.001 G unfused). At 224 FFNet-1 is 2.285 G fused, 2.298 G unfused.
# Unfused (training form, the checkpoints' layout) params: 13.78M / 27.21M / 48.82M / 79.87M.
PUBLISHED: Dict[str, Dict[str, float]] = {
    "ffnet_1": {"params_m": 13.7, "gmacs": 2.9, "resolution": 256, "top1": 81.3},
    "ffnet_2": {"params_m": 26.9, "gmacs": 6.0, "resolution": 256, "top1": 82.9},
    "ffnet_3": {"params_m": 48.3, "gmacs": 10.1, "resolution": 256, "top1": 83.9},
    "ffnet_4": {"params_m": 79.2, "gmacs": 43.1, "resolution": 384, "top1": 85.3},
}


class ConvNorm(nn.Sequential):
    """Bias-free conv then BatchNorm (children `c`, `bn` as in the official weights); fuses to one conv."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, bn_weight_init: float = 1.0):
        super().__init__()
        self.c = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        c, bn = self.c, self.bn
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, groups=c.groups,
                         device=c.weight.device)
        conv.weight.copy_(c.weight * scale[:, None, None, None])
        conv.bias.copy_(bn.bias - bn.running_mean * scale)
        return conv


class NormConv(nn.Sequential):
    """BatchNorm then a bias-free 1x1 conv (children `bn`, `c`); fuses to one 1x1 conv with bias."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_chs)
        self.c = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        bn, c = self.bn, self.c
        scale = bn.weight / (bn.running_var + bn.eps).sqrt()
        shift = bn.bias - bn.running_mean * scale
        conv = nn.Conv2d(c.in_channels, c.out_channels, 1, device=c.weight.device)
        conv.weight.copy_(c.weight * scale[None, :, None, None])
        conv.bias.copy_(c.weight.flatten(1) @ shift)
        return conv


class RepDwConv(nn.Module):
    """Depthwise k x k conv-BN plus a parallel (k // 2) x (k // 2) conv-BN branch (`conv`, `conv1`); at
    inference both fold into one k x k conv by zero-padding the small kernel."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 7, stride: int = 1):
        super().__init__()
        small = kernel_size // 2
        self.conv = ConvNorm(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=in_chs)
        self.conv1 = ConvNorm(in_chs, out_chs, small, stride, small // 2, groups=in_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.conv1(x)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        big, small = self.conv.fuse(), self.conv1.fuse()
        p = (big.kernel_size[0] - small.kernel_size[0]) // 2
        big.weight.add_(F.pad(small.weight, [p, p, p, p]))
        big.bias.add_(small.bias)
        return big


class NormConvSkip(nn.Module):
    """x + 1x1 conv(BN(x)) (child `conv`, as in the official PatchMerging); fuses to one 1x1 conv."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = NormConv(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + x

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        conv = self.conv.fuse()
        conv.weight.add_(torch.eye(conv.out_channels, device=conv.weight.device)[:, :, None, None])
        return conv


def _dw_conv(dim: int, kernel_size: int, norm: bool) -> nn.Module:
    """A 7x7 dw conv is always the re-parameterizable pair; smaller ones are a plain conv (token mixer) or
    conv-BN (channel mixer), as in the official code."""
    if kernel_size == 7:
        return RepDwConv(dim, dim, kernel_size)
    if norm:
        return ConvNorm(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim)
    return nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim)


class LayerScaleResidual(nn.Module):
    """x + drop_path(gamma * main(x)); `layer_scale` (gamma, shape (C, 1, 1)) exists only when enabled."""

    def __init__(self, main: nn.Module, dim: int, drop_path: float = 0.0, use_layer_scale: bool = True,
                 layer_scale_init_value: float = 1e-5):
        super().__init__()
        self.main = main
        # A None parameter is left out of the state dict, as in the official weights without layer scale.
        self.layer_scale = (nn.Parameter(layer_scale_init_value * torch.ones(dim, 1, 1)) if use_layer_scale
                            else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.main(x)
        gamma = self.layer_scale  # local, so TorchScript can refine the Optional
        if gamma is not None:
            y = y * gamma
        return x + self.drop_path(y)


class TokenMixer(nn.Module):
    """FFNified attention: 1x1 conv-BN (query/key), dw conv (keys), GELU (instead of softmax), dw conv (values)."""

    def __init__(self, dim: int, ks1: int, ks2: int, use_gelu: bool = True):
        super().__init__()
        self.fc = ConvNorm(dim, dim)
        self.conv1 = _dw_conv(dim, ks1, norm=False)
        self.act = nn.GELU() if use_gelu else nn.ReLU()
        self.conv2 = _dw_conv(dim, ks2, norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(self.fc(x))))


class ChannelMixer(nn.Module):
    """dw conv, then the 1x1 expand -> GELU -> 1x1 project FFN."""

    def __init__(self, dim: int, kernel_size: int, expansion_ratio: float, use_gelu: bool = True):
        super().__init__()
        hidden = int(dim * expansion_ratio)
        self.conv = _dw_conv(dim, kernel_size, norm=True)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU() if use_gelu else nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))


class FFBlock(nn.Module):
    """Residual token mixer (optionally followed by SE), then residual channel mixer."""

    def __init__(self, dim: int, kernel_size: int, use_se: bool, use_gelu: bool, expansion_ratio: float,
                 ks1: int, ks2: int, drop_path: float = 0.0, use_layer_scale: bool = True,
                 layer_scale_init_value: float = 1e-5):
        super().__init__()
        self.token_mixer = nn.Sequential(
            LayerScaleResidual(TokenMixer(dim, ks1, ks2, use_gelu), dim, drop_path, use_layer_scale,
                               layer_scale_init_value),
            SqueezeExcite(dim, 0.25) if use_se else nn.Identity(),
        )
        self.channel_mixer = LayerScaleResidual(ChannelMixer(dim, kernel_size, expansion_ratio, use_gelu), dim,
                                                drop_path, use_layer_scale, layer_scale_init_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


class PatchMerging(nn.Module):
    """Stride-2 downsampling: re-parameterizable 7x7 dw conv (C_in -> C_out, groups C_in), then x + 1x1(BN(x))."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(RepDwConv(dim, out_dim, 7, 2), NormConvSkip(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class FFNet(nn.Module):
    """FFNet backbone: two stride-2 3x3 conv-BN stem, four stages (a PatchMerging in front of stages 2-4),
    final BN, average pool, linear head."""

    def __init__(self, embed_dims: Sequence[int] = (80, 160, 320, 640), depths: Sequence[int] = (2, 2, 8, 2),
                 in_dim: int = 64, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 kernel_sizes: Sequence[int] = (3, 3, 3, 3), kernel_sizes1: Sequence[int] = (3, 3, 7, 7),
                 kernel_sizes2: Sequence[int] = (3, 3, 7, 7), use_gelus: Sequence[bool] = (True,) * 4,
                 use_ses: Sequence[bool] = (False,) * 4, expansion_ratios: Sequence[float] = (3, 3, 3, 3),
                 use_layer_scale: bool = False, layer_scale_init_value: float = 1e-5, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, layer_norm_last: bool = False, **kwargs: Any):
        super().__init__()
        assert global_pool in ("avg", ""), "FFNet pools by mean only"
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.patch_embed = nn.Sequential(ConvNorm(in_chans, in_dim, 3, 2, 1), nn.GELU(),
                                         ConvNorm(in_dim, embed_dims[0], 3, 2, 1))
        self.stages = nn.ModuleList()
        self.feature_info: List[Dict[str, Any]] = []
        cur = 0
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            blocks: List[nn.Module] = [PatchMerging(embed_dims[i - 1], dim)] if i > 0 else []
            # SE (when enabled for a stage) sits in every other block, starting with the first.
            blocks += [FFBlock(dim, kernel_sizes[i], use_ses[i] and d % 2 == 0, use_gelus[i], expansion_ratios[i],
                               kernel_sizes1[i], kernel_sizes2[i], dpr[cur + d], use_layer_scale,
                               layer_scale_init_value) for d in range(depth)]
            self.stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))
            cur += depth
        self.norm = LayerNorm2d(self.num_features) if layer_norm_last else nn.BatchNorm2d(self.num_features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, LayerNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = self.avgpool(x).flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, checkpoint_path: str, strict: bool = True) -> None:
        """Load an official checkpoint (timm's `custom_load` hook). Its training script pickles the argparse
        Namespace beside the weights, which `weights_only` loading refuses: allow that one class, nothing else."""
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        self.load_state_dict(checkpoint_filter_fn(checkpoint, self), strict=strict)


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Official checkpoints come from timm's train.py ({"state_dict": ...}); drop a DDP "module." prefix."""
    state_dict = state_dict.get("state_dict", state_dict.get("model", state_dict))
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def _cfg(url: str = "", **kwargs: Any) -> Dict[str, Any]:
    # Official pretrained cfg (models/ffnet.py): 256x256, bicubic, ImageNet mean/std, center crop. The official
    # cfg also says fixed_input_size=True, which no layer needs (all convs): left False so 224 runs work.
    return {"url": url, "custom_load": bool(url), "num_classes": 1000, "input_size": (3, 256, 256),
            "pool_size": (8, 8), "crop_pct": 0.9, "interpolation": "bicubic", "crop_mode": "center",
            "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed.0.c",
            "classifier": "head", "paper_ids": "arXiv:2406.02021", **kwargs}


_RELEASE = "https://github.com/ysj9909/FFNet/releases/download/v1.0/"
default_cfgs = generate_default_cfgs({
    "ffnet_1.in1k": _cfg(_RELEASE + "ffnet_1.pth.tar"),
    "ffnet_1.in1k_dist": _cfg(_RELEASE + "ffnet_1_distillation.pth.tar"),
    "ffnet_2.in1k": _cfg(_RELEASE + "ffnet_2.pth.tar"),
    "ffnet_2.in1k_dist": _cfg(_RELEASE + "ffnet_2_distillation.pth.tar"),
    "ffnet_3.in1k": _cfg(_RELEASE + "ffnet_3.pth.tar", crop_pct=0.95),
    "ffnet_3.in1k_dist": _cfg(_RELEASE + "ffnet_3_distillation.pth.tar", crop_pct=0.95),
    "ffnet_3.in1k_384": _cfg(_RELEASE + "ffnet_3_384.pth.tar", crop_pct=0.95, input_size=(3, 384, 384),
                             pool_size=(12, 12)),
    "ffnet_4.in1k_384": _cfg(_RELEASE + "ffnet_4_384.pth.tar", crop_pct=0.95, input_size=(3, 384, 384),
                             pool_size=(12, 12)),
})


def _create_ffnet(variant: str, pretrained: bool = False, **kwargs: Any) -> FFNet:
    return build_model_with_cfg(FFNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


@register_model
def ffnet_1(pretrained: bool = False, **kwargs: Any) -> FFNet:
    """FFNet-1: 80-160-320-640 channels, depths 2-2-8-2, 3x3 channel-mixer dw convs."""
    args = dict(depths=(2, 2, 8, 2), embed_dims=(80, 160, 320, 640), kernel_sizes=(3, 3, 3, 3))
    return _create_ffnet("ffnet_1", pretrained, **dict(args, **kwargs))


@register_model
def ffnet_2(pretrained: bool = False, **kwargs: Any) -> FFNet:
    """FFNet-2: 88-176-352-704 channels, depths 3-3-15-3, 7x7 channel-mixer dw convs."""
    args = dict(depths=(3, 3, 15, 3), embed_dims=(88, 176, 352, 704), kernel_sizes=(7, 7, 7, 7))
    return _create_ffnet("ffnet_2", pretrained, **dict(args, **kwargs))


@register_model
def ffnet_3(pretrained: bool = False, **kwargs: Any) -> FFNet:
    """FFNet-3: 96-192-384-768 channels, depths 4-4-22-5, layer scale (init 1e-6)."""
    args = dict(depths=(4, 4, 22, 5), embed_dims=(96, 192, 384, 768), kernel_sizes=(7, 7, 7, 7),
                use_layer_scale=True, layer_scale_init_value=1e-6)
    return _create_ffnet("ffnet_3", pretrained, **dict(args, **kwargs))


@register_model
def ffnet_4(pretrained: bool = False, **kwargs: Any) -> FFNet:
    """FFNet-4: 128-256-512-1024 channels, depths 4-4-27-3, layer scale (init 1e-6)."""
    args = dict(depths=(4, 4, 27, 3), embed_dims=(128, 256, 512, 1024), kernel_sizes=(7, 7, 7, 7),
                use_layer_scale=True, layer_scale_init_value=1e-6)
    return _create_ffnet("ffnet_4", pretrained, **dict(args, **kwargs))
