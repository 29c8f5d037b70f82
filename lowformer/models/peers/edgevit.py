"""EdgeViT, written in timm's style.

Pan et al., "EdgeViTs: Competing Light-weight CNNs on Mobile Devices with Vision Transformers", ECCV 2022
(arXiv 2205.03436). Architecture and parameter names follow the authors' code (saic-fi/edgevit) so its
checkpoints load unchanged.

Every stage stacks Local-Global-Local (LGL) blocks: a convolutional local aggregator (only in the stages
that subsample), then self-attention over a sparse grid of delegate tokens (every `sr`-th pixel), whose
result a depthwise transposed convolution propagates back to the full grid.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models._registry import generate_default_cfgs

__all__ = ["EdgeViT", "PUBLISHED"]

# Paper, ImageNet-1K comparison table (224x224): params in M, FLOPs in G. The FLOPs are MACs, counted with
# fvcore (src/check_model.py of the official code), which includes the attention matmuls as torch's
# FlopCounterMode does. Figures are printed to one decimal, so "equal" means equal at that precision:
# - XXS: 4.07M / 0.551 GMACs measured, both round to the printed 4.1 / 0.6.
# - XS: 6.77M measured vs 6.7 printed (+1.04%, the official code's count); 1.128 GMACs rounds to 1.1.
# - S: the official code (depths 1-2-5-3) has 13.1M params, not the printed 11.1 (its 1.911 GMACs do match 1.9);
#   we follow the code, whose checkpoints the authors trained.
PUBLISHED: Dict[str, Dict[str, float]] = {
    "edgevit_xxs": {"params_m": 4.1, "gmacs": 0.6, "top1": 74.4},
    "edgevit_xs": {"params_m": 6.7, "gmacs": 1.1, "top1": 77.5},
    "edgevit_s": {"params_m": 11.1, "gmacs": 1.9, "top1": 81.0},
}


class PatchEmbed(nn.Module):
    """Non-overlapping strided conv, then LayerNorm over channels (the official layer has no size assert here,
    so any input divisible by the stride works)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int):
        super().__init__()
        # Registration order (norm before proj) matches the official state dict.
        self.norm = nn.LayerNorm(embed_dim)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LocalAgg(nn.Module):
    """First "L" of LGL: depthwise positional conv, then a BN -> 1x1 -> 5x5 dw -> 1x1 mixer and a conv MLP."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0,
                 act_layer: type = nn.GELU):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)  # named `attn` in the official weights
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop, use_conv=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.attn(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class GlobalSparseAttn(nn.Module):
    """"G" and second "L" of LGL: multi-head self-attention among every `sr`-th token (subsampling by a 1x1
    average pool with stride sr), then a depthwise transposed conv (k = s = sr) spreads the delegates' output
    back over the full grid, followed by LayerNorm; the output projection comes last."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_scale: Optional[float] = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, sr_ratio: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr = sr_ratio
        if sr_ratio > 1:
            self.sampler = nn.AvgPool2d(1, sr_ratio)
            self.LocalProp = nn.ConvTranspose2d(dim, dim, sr_ratio, stride=sr_ratio, groups=dim)
            self.norm = nn.LayerNorm(dim)
        else:
            self.sampler = nn.Identity()
            self.LocalProp = None
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, H*W, C) tokens."""
        B, C = x.shape[:2]
        x = self.sampler(x)
        h, w = x.shape[-2:]  # the delegate grid, taken from the tensor so tracing stays shape-generic
        x = x.flatten(2).transpose(1, 2)
        qkv = self.qkv(x).reshape(B, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, h * w, C)
        if self.LocalProp is not None:
            x = self.LocalProp(x.transpose(1, 2).reshape(B, C, h, w))
            x = self.norm(x.flatten(2).transpose(1, 2))
        return self.proj_drop(self.proj(x))


class SelfAttn(nn.Module):
    """Transformer half of the LGL block: positional dw conv, pre-norm sparse attention and MLP on tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, act_layer: type = nn.GELU, norm_layer: type = nn.LayerNorm,
                 sr_ratio: int = 1):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = norm_layer(dim)
        self.attn = GlobalSparseAttn(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                     attn_drop=attn_drop, proj_drop=drop, sr_ratio=sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        B, C, H, W = x.shape
        # The attention takes the pre-normed map as (B, C, H, W): LayerNorm over channels, kept spatial.
        y = self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        t = x.flatten(2).transpose(1, 2) + self.drop_path(self.attn(y))
        t = t + self.drop_path(self.mlp(self.norm2(t)))
        return t.transpose(1, 2).reshape(B, C, H, W)


class LGLBlock(nn.Module):
    """Local aggregation (stages with sr > 1 only, as in the official code), then sparse global attention."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, act_layer: type = nn.GELU, norm_layer: type = nn.LayerNorm,
                 sr_ratio: int = 1):
        super().__init__()
        self.LocalAgg = (LocalAgg(dim, mlp_ratio, drop, drop_path, act_layer) if sr_ratio > 1
                         else nn.Identity())
        self.SelfAttn = SelfAttn(dim, num_heads, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, drop_path,
                                 act_layer, norm_layer, sr_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SelfAttn(self.LocalAgg(x))


class EdgeViT(nn.Module):
    """EdgeViT backbone: four stages of patch embedding (strides 4, 2, 2, 2) and LGL blocks, BN, mean pool,
    linear head. Attribute names (`patch_embed1`, `blocks1`, ...) are the official ones."""

    def __init__(self, depths: Sequence[int] = (1, 1, 3, 1), embed_dims: Sequence[int] = (48, 96, 240, 384),
                 head_dim: int = 48, mlp_ratios: Sequence[float] = (4, 4, 4, 4), qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, sr_ratios: Sequence[int] = (4, 2, 2, 1), in_chans: int = 3,
                 num_classes: int = 1000, global_pool: str = "avg", drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer: Optional[type] = None, **kwargs: Any):
        super().__init__()
        assert global_pool in ("avg", ""), "EdgeViT pools by mean only"
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth decay rule
        self.feature_info: List[Dict[str, Any]] = []
        # All patch embeddings first, then all blocks: the official registration (and state-dict) order.
        for i, dim in enumerate(embed_dims):
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(embed_dims[i - 1] if i else in_chans, dim,
                                                            4 if i == 0 else 2))
        cur = 0
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            setattr(self, f"blocks{i + 1}", nn.ModuleList([
                LGLBlock(dim, dim // head_dim, mlp_ratios[i], qkv_bias, qk_scale, proj_drop_rate, attn_drop_rate,
                         dpr[cur + j], norm_layer=norm_layer, sr_ratio=sr_ratios[i])
                for j in range(depth)]))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"blocks{i + 1}"))
            cur += depth
        self.pos_drop = nn.Dropout(drop_rate)
        self.norm = nn.BatchNorm2d(embed_dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
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
        # Spelled out stage by stage (no getattr by name) so torch.jit.script compiles it.
        x = self.pos_drop(self.patch_embed1(x))
        for blk in self.blocks1:
            x = blk(x)
        x = self.patch_embed2(x)
        for blk in self.blocks2:
            x = blk(x)
        x = self.patch_embed3(x)
        for blk in self.blocks3:
            x = blk(x)
        x = self.patch_embed4(x)
        for blk in self.blocks4:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Official checkpoints are DeiT-style ({"model": state_dict}); drop a DDP "module." prefix."""
    state_dict = state_dict.get("model", state_dict.get("state_dict", state_dict))
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def _cfg(url: str = "", **kwargs: Any) -> Dict[str, Any]:
    # Official eval transform (src/datasets.py): resize 256 bicubic, center crop 224, ImageNet mean/std.
    return {"url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
            "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed1.proj", "classifier": "head",
            "paper_ids": "arXiv:2205.03436", **kwargs}


# The authors published no ImageNet weights with their code, hence no URLs.
default_cfgs = generate_default_cfgs({
    "edgevit_xxs": _cfg(),
    "edgevit_xs": _cfg(),
    "edgevit_s": _cfg(),
})


def _create_edgevit(variant: str, pretrained: bool = False, **kwargs: Any) -> EdgeViT:
    return build_model_with_cfg(EdgeViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


@register_model
def edgevit_xxs(pretrained: bool = False, **kwargs: Any) -> EdgeViT:
    """EdgeViT-XXS: 36-72-144-288 channels, head width 36."""
    args = dict(depths=(1, 1, 3, 2), embed_dims=(36, 72, 144, 288), head_dim=36)
    return _create_edgevit("edgevit_xxs", pretrained, **dict(args, **kwargs))


@register_model
def edgevit_xs(pretrained: bool = False, **kwargs: Any) -> EdgeViT:
    """EdgeViT-XS: 48-96-240-384 channels, head width 48."""
    args = dict(depths=(1, 1, 3, 1), embed_dims=(48, 96, 240, 384), head_dim=48)
    return _create_edgevit("edgevit_xs", pretrained, **dict(args, **kwargs))


@register_model
def edgevit_s(pretrained: bool = False, **kwargs: Any) -> EdgeViT:
    """EdgeViT-S: XS widths with depths 1-2-5-3 (the official code's depths)."""
    args = dict(depths=(1, 2, 5, 3), embed_dims=(48, 96, 240, 384), head_dim=48)
    return _create_edgevit("edgevit_s", pretrained, **dict(args, **kwargs))
