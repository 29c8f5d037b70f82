"""EfficientMod: "Efficient Modulation for Vision Networks" (Ma et al., ICLR 2024), in timm's style.

Written from the paper and the official code (github.com/ma-xu/EfficientMod), with the same
state_dict keys and shapes so the official checkpoints load. The network runs channels-last
(B, H, W, C) like the official code, so every LayerNorm and Linear acts on the last dimension.

EfficientMod block (paper Fig. 1c, Eq. 4): out = x + gamma * fc2(act(fc1(ln(x))) * ctx(ln(x))),
where ctx(x) = g(gelu(dwconv7x7(f(x)))) is repeated along channels to the expanded width.
The two last stages of the hybrid models (xxs/xs/s) end with plain ViT attention blocks.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models._registry import generate_default_cfgs
from torch import nn

__all__ = ["EfficientMod", "PUBLISHED"]

_logger = logging.getLogger(__name__)

# Paper, ImageNet-1K comparison table (224x224; params also in the README): params in M and GMACs
# ("FLOPs" in the paper, counted as MACs).
# The GMACs are printed to 0.1 G only; they include the attention matmuls (q @ k^T, attn @ v), which
# torch's FlopCounterMode also counts here because our attention uses explicit matmuls (the official
# code's F.scaled_dot_product_attention is invisible to FlopCounterMode on CPU).
PUBLISHED: Dict[str, Dict[str, float]] = {
    "efficientmod_xxs": {"params_m": 4.7, "gmacs": 0.6},
    "efficientmod_xs": {"params_m": 6.6, "gmacs": 0.8},
    "efficientmod_s": {"params_m": 12.9, "gmacs": 1.4},
    "efficientmod_s_conv": {"params_m": 12.9},  # README table (no attention blocks); no MACs published
}


class ConvEmbed(nn.Module):
    """Strided conv patch embedding / downsampling: channels-last in and out, LayerNorm after."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, padding: int,
                 norm: bool = True) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, kernel_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(out_chs) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.norm(x)


class ContextLayer(nn.Module):
    """ctx(x) = g(sum_k act(dwconv_k(f(x)))): the block's spatial context branch (channels-last)."""

    def __init__(self, dim: int, ctx_dim: int, kernel_sizes: Sequence[int] = (7,)) -> None:
        super().__init__()
        self.f = nn.Linear(dim, ctx_dim)
        self.g = nn.Linear(ctx_dim, dim)
        self.act = nn.GELU()
        # The official code allows several kernels summed together; every released model uses one.
        self.context_list = nn.ModuleList(
            [nn.Conv2d(ctx_dim, ctx_dim, k, padding=k // 2, groups=ctx_dim) for k in kernel_sizes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.f(x).permute(0, 3, 1, 2)
        out = torch.zeros_like(x)
        for conv in self.context_list:
            out = out + self.act(conv(x))
        return self.g(out.permute(0, 2, 3, 1))


class ModulationMlp(nn.Module):
    """fc2(act(fc1(x)) * repeat(ctx(x))): the MLP whose expanded features are modulated by context."""

    def __init__(self, dim: int, mlp_ratio: int, kernel_size: int = 7, drop: float = 0.) -> None:
        super().__init__()
        hidden = dim * mlp_ratio
        # The context width is hidden / ratio = dim, tiled `ratio` times to modulate all hidden channels.
        self.repeats = mlp_ratio
        self.fc1 = nn.Linear(dim, hidden)
        self.context_layer = ContextLayer(dim, hidden // mlp_ratio, (kernel_size,))
        self.fc2 = nn.Linear(hidden, dim)
        # With ratio 1 the official block has no activation (nor dropout) between fc1 and the modulation.
        self.act = nn.GELU() if mlp_ratio != 1 else nn.Identity()
        self.drop = nn.Dropout(drop) if mlp_ratio != 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx = self.context_layer(x)
        x = self.drop(self.act(self.fc1(x)))
        if self.repeats > 1:
            ctx = ctx.repeat(1, 1, 1, self.repeats)
        return self.fc2(x * ctx)


class ModulationBlock(nn.Module):
    """x + drop_path(gamma_1 * mlp(norm(x)))."""

    def __init__(self, dim: int, mlp_ratio: int, kernel_size: int = 7, drop: float = 0.,
                 drop_path: float = 0., layer_scale_init: Optional[float] = 1e-4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = ModulationMlp(dim, mlp_ratio, kernel_size, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        if layer_scale_init is not None:
            self.gamma_1 = nn.Parameter(layer_scale_init * torch.ones(dim))
        else:
            self.register_buffer("gamma_1", torch.ones(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.gamma_1 * self.mlp(self.norm(x)))


class Attention(nn.Module):
    """Multi-head self-attention over tokens (B, N, C); heads are at least 32 wide, as in the paper."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.,
                 proj_drop: float = 0.) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = max(dim // num_heads, 32)
        self.scale = self.head_dim ** -0.5
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, inner * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # Explicit matmuls rather than F.scaled_dot_product_attention: same result, exports to plain
        # MatMul/Softmax at opset 17, and FlopCounterMode counts them (the paper's MACs include them).
        attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(x))


class AttentionBlock(nn.Module):
    """Pre-norm ViT block on a channels-last map (no layer scale, as in the official hybrid stages)."""

    def __init__(self, dim: int, mlp_ratio: float = 4., num_heads: int = 8, drop: float = 0.,
                 drop_path: float = 0.) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, proj_drop=drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(B, H, W, C)


class EfficientModStage(nn.Module):
    """Modulation blocks, then attention blocks, then (except in the last stage) the downsampling."""

    def __init__(self, dim: int, out_dim: Optional[int], depth: int, attn_depth: int,
                 mlp_ratios: Sequence[int], att_ratio: float, kernel_size: int = 7,
                 drop: float = 0., drop_path: Sequence[float] = (), layer_scale_init: Optional[float] = 1e-4) -> None:
        super().__init__()
        dpr = list(drop_path) or [0.] * (depth + attn_depth)
        blocks: List[nn.Module] = [
            ModulationBlock(dim, mlp_ratios[i], kernel_size, drop, dpr[i], layer_scale_init) for i in range(depth)]
        blocks += [AttentionBlock(dim, att_ratio, drop=drop, drop_path=dpr[depth + j]) for j in range(attn_depth)]
        self.blocks = nn.Sequential(*blocks)
        # Downsampling sits at the end of the stage so the official keys `layers.i.downsample.*` match.
        self.downsample = ConvEmbed(dim, out_dim, 3, 2, 1) if out_dim is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.blocks(x))


class EfficientMod(nn.Module):
    """EfficientMod backbone; `forward_features` returns the normalised channels-last last-stage map."""

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dims: Sequence[int] = (32, 64, 144, 288),
            depths: Sequence[int] = (3, 3, 4, 2),
            attention_depths: Sequence[int] = (0, 0, 3, 3),
            mlp_ratios: Sequence[Sequence[int]] = ((1, 4) * 2,) * 4,
            att_ratios: Sequence[float] = (4, 4, 4, 4),
            kernel_size: int = 7,
            stem_kernel: int = 7,
            layer_scale_init: Optional[float] = 1e-4,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
    ) -> None:
        super().__init__()
        assert global_pool in ("avg", ""), "EfficientMod pools by averaging"
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.patch_embed = ConvEmbed(in_chans, embed_dims[0], stem_kernel, 4, stem_kernel // 2)
        total = sum(depths) + sum(attention_depths)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, total)]
        stages, start = [], 0
        for i, (dim, d, a) in enumerate(zip(embed_dims, depths, attention_depths)):
            last = i == len(embed_dims) - 1
            stages.append(EfficientModStage(
                dim, None if last else embed_dims[i + 1], d, a, mlp_ratios[i], att_ratios[i], kernel_size,
                drop_rate, dpr[start:start + d + a], layer_scale_init))
            start += d + a
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Official init: truncated normal for Linear only (convs keep PyTorch's default).
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x.permute(0, 2, 3, 1))
        x = self.layers(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # The official repo sets no cfg, so its validate.py falls back to timm's defaults below.
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        "paper_ids": "arXiv:2403.19963", "paper_name": "Efficient Modulation for Vision Networks",
        "origin_url": "https://github.com/ma-xu/EfficientMod", "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "efficientmod_xxs": _cfg(),
    "efficientmod_xs": _cfg(),
    "efficientmod_s": _cfg(),
    "efficientmod_s_conv": _cfg(),
})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> EfficientMod:
    return build_model_with_cfg(EfficientMod, variant, pretrained, **kwargs)


def _stage_ratios(pattern: Tuple[int, ...], depths: Sequence[int]) -> Tuple[Tuple[int, ...], ...]:
    # Modulation blocks alternate the MLP ratio (1, r, 1, r, ...), as in every official config.
    return tuple(tuple(pattern[i % len(pattern)] for i in range(d)) for d in depths)


@register_model
def efficientmod_xxs(pretrained: bool = False, **kwargs: Any) -> EfficientMod:
    depths = (2, 2, 6, 2)
    args = dict(embed_dims=(32, 64, 128, 256), depths=depths, attention_depths=(0, 0, 1, 2),
                mlp_ratios=_stage_ratios((1, 6), depths), att_ratios=(0, 0, 4, 4))
    return _create("efficientmod_xxs", pretrained, **dict(args, **kwargs))


@register_model
def efficientmod_xs(pretrained: bool = False, **kwargs: Any) -> EfficientMod:
    depths = (3, 3, 4, 2)
    args = dict(embed_dims=(32, 64, 144, 288), depths=depths, attention_depths=(0, 0, 3, 3),
                mlp_ratios=_stage_ratios((1, 4), depths), att_ratios=(4, 4, 4, 4))
    return _create("efficientmod_xs", pretrained, **dict(args, **kwargs))


@register_model
def efficientmod_s(pretrained: bool = False, **kwargs: Any) -> EfficientMod:
    depths = (4, 4, 8, 4)
    args = dict(embed_dims=(32, 64, 144, 312), depths=depths, attention_depths=(0, 0, 4, 4),
                mlp_ratios=_stage_ratios((1, 6), depths), att_ratios=(4, 4, 4, 5))
    return _create("efficientmod_s", pretrained, **dict(args, **kwargs))


@register_model
def efficientmod_s_conv(pretrained: bool = False, **kwargs: Any) -> EfficientMod:
    """The pure-convolution EfficientMod-s (no attention blocks)."""
    depths = (4, 4, 12, 8)
    args = dict(embed_dims=(40, 80, 160, 344), depths=depths, attention_depths=(0, 0, 0, 0),
                mlp_ratios=_stage_ratios((1, 6), depths), att_ratios=(4, 4, 4, 4))
    return _create("efficientmod_s_conv", pretrained, **dict(args, **kwargs))
