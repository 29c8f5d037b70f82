"""iFormer: "Inception Transformer" (Si et al., NeurIPS 2022), in timm's style.

Written from the paper and the official code (github.com/sail-sg/iFormer), with the same
state_dict keys and shapes so the official checkpoints load. Named `iformer_small/base/large`
after the official model functions; timm's own `iformer_s/t/m/l/h` are a different, later model
("iFormer: Integrating ConvNet and Transformer for Mobile Application").

Inception mixer (paper Sec. 3.2): the channels of a token map are split into a high-frequency part
(half 1x1 conv + 3x3 depthwise conv, half 3x3 max-pool + 1x1 conv) and a low-frequency part
(self-attention, on a 2x average-pooled map in the first two stages, upsampled back). The split
follows a "frequency ramp": deeper blocks give more channels to attention.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models._registry import generate_default_cfgs
from torch import nn

__all__ = ["InceptionTransformer", "PUBLISHED"]

_logger = logging.getLogger(__name__)

# Paper, ImageNet-1K table (224x224; also the README): params in M and GFLOPs, which are MACs, including
# the attention matmuls like our FlopCounterMode count. The official model functions' docstrings give
# finer figures (19.866M / 4.849G, 47.866M / 9.379G, 86.637M / 14.048G). Our count is ~0.5% lower,
# presumably because their counter also counts ops FlopCounterMode skips (norms, pooling, upsampling).
PUBLISHED: Dict[str, Dict[str, float]] = {
    "iformer_small": {"params_m": 20.0, "gmacs": 4.8, "params_m_repo": 19.866, "gmacs_repo": 4.849},
    "iformer_base": {"params_m": 48.0, "gmacs": 9.4, "params_m_repo": 47.866, "gmacs_repo": 9.379},
    "iformer_large": {"params_m": 87.0, "gmacs": 14.0, "params_m_repo": 86.637, "gmacs_repo": 14.048},
}


class StemEmbed(nn.Module):
    """Two stride-2 3x3 conv-BN layers (GELU between); returns a channels-last map."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.proj1 = nn.Conv2d(in_chs, out_chs // 2, 3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(out_chs // 2)
        self.gelu1 = nn.GELU()
        self.proj2 = nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1)
        self.norm2 = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gelu1(self.norm1(self.proj1(x)))
        return self.norm2(self.proj2(x)).permute(0, 2, 3, 1)


class ConvEmbed(nn.Module):
    """Stride-2 3x3 conv + BN between stages: channels-first in, channels-last out."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x)).permute(0, 2, 3, 1)


class HighMixer(nn.Module):
    """High-frequency mixer on (B, C, H, W): conv path and max-pool path, each doubling its channels."""

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.cnn_in = dim // 2
        pool_in = dim // 2
        self.conv1 = nn.Conv2d(self.cnn_in, self.cnn_in * 2, 1, bias=False)
        self.proj1 = nn.Conv2d(self.cnn_in * 2, self.cnn_in * 2, kernel_size, padding=kernel_size // 2,
                               groups=self.cnn_in * 2, bias=False)
        self.mid_gelu1 = nn.GELU()
        self.Maxpool = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)
        self.proj2 = nn.Conv2d(pool_in, pool_in * 2, 1)
        self.mid_gelu2 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cx = self.mid_gelu1(self.proj1(self.conv1(x[:, :self.cnn_in])))
        px = self.mid_gelu2(self.proj2(self.Maxpool(x[:, self.cnn_in:])))
        return torch.cat((cx, px), dim=1)


class LowMixer(nn.Module):
    """Low-frequency mixer: multi-head self-attention on an optionally average-pooled (B, C, H, W) map."""

    def __init__(self, dim: int, num_heads: int = 1, qkv_bias: bool = False, attn_drop: float = 0.,
                 pool_size: int = 2) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.dim = dim
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        if pool_size > 1:
            self.pool: nn.Module = nn.AvgPool2d(pool_size, stride=pool_size, count_include_pad=False)
            self.uppool: nn.Module = nn.Upsample(scale_factor=pool_size)  # nearest, as in the official code
        else:
            self.pool = self.uppool = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xa = self.pool(x)
        B, C, H, W = xa.shape
        N = H * W
        qkv = self.qkv(xa.flatten(2).transpose(1, 2))
        q, k, v = qkv.reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        # (B, heads, N, d) -> (B, heads * d, N): channels head-major, then back to the pooled grid.
        xa = (attn @ v).transpose(2, 3).reshape(B, C, H, W)
        return self.uppool(xa)


class InceptionMixer(nn.Module):
    """Split channels into high (first) and low (last `attention_head * head_dim`) frequency parts,
    mix each, concatenate, add a depthwise 3x3 fusion and project back (channels-last in and out)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.,
                 proj_drop: float = 0., attention_head: int = 1, pool_size: int = 2) -> None:
        super().__init__()
        head_dim = dim // num_heads
        self.low_dim = attention_head * head_dim
        self.high_dim = dim - self.low_dim
        self.high_mixer = HighMixer(self.high_dim)
        self.low_mixer = LowMixer(self.low_dim, attention_head, qkv_bias, attn_drop, pool_size)
        fused = self.low_dim + self.high_dim * 2
        self.conv_fuse = nn.Conv2d(fused, fused, 3, padding=1, groups=fused, bias=False)
        self.proj = nn.Conv2d(fused, dim, 1)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        x = torch.cat((self.high_mixer(x[:, :self.high_dim]), self.low_mixer(x[:, self.high_dim:])), dim=1)
        x = x + self.conv_fuse(x)
        x = self.proj_drop(self.proj(x))
        return x.permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm transformer block with the Inception mixer as token mixer (channels-last)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4., qkv_bias: bool = True, drop: float = 0.,
                 attn_drop: float = 0., drop_path: float = 0., attention_head: int = 1, pool_size: int = 2,
                 use_layer_scale: bool = False, layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = InceptionMixer(dim, num_heads, qkv_bias, attn_drop, attention_head=attention_head,
                                   pool_size=pool_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.use_layer_scale = use_layer_scale
        if use_layer_scale:
            self.layer_scale_1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
            self.layer_scale_2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        else:
            # Non-persistent ones keep the state_dict equal to the official one (no layer scale keys).
            self.register_buffer("layer_scale_1", torch.ones(()), persistent=False)
            self.register_buffer("layer_scale_2", torch.ones(()), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.layer_scale_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.layer_scale_2 * self.mlp(self.norm2(x)))


class InceptionTransformer(nn.Module):
    """iFormer backbone. `forward_features` returns the normalised channels-last last-stage map.

    The four stages keep the official flat attribute names (patch_embed/pos_embed1/blocks1, ...,
    patch_embed4/pos_embed4/blocks4) so official checkpoints load unchanged. Attention is pooled 2x in
    stages 1-2; layer scale is used in stages 3-4 only, as in the official code.
    """

    def __init__(
            self,
            img_size: int = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dims: Sequence[int] = (96, 192, 320, 384),
            depths: Sequence[int] = (3, 3, 9, 3),
            num_heads: Sequence[int] = (3, 6, 10, 12),
            attention_heads: Sequence[int] = (1,) * 3 + (3,) * 3 + (7,) * 4 + (9,) * 5 + (11,) * 3,
            mlp_ratio: float = 4.,
            qkv_bias: bool = True,
            drop_rate: float = 0.,
            attn_drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            use_layer_scale: bool = True,
            layer_scale_init_value: float = 1e-6,
    ) -> None:
        super().__init__()
        assert global_pool in ("avg", ""), "iFormer pools by averaging"
        assert len(attention_heads) == sum(depths), "one attention-head count per block"
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        self.grid_sizes = [img_size // 4 // 2 ** i for i in range(4)]

        # Stage i: embed (stem or stride-2 conv), learned position embedding, blocks.
        self.patch_embed = StemEmbed(in_chans, embed_dims[0])
        start = 0
        self.feature_info: List[Dict[str, Any]] = []
        for i in range(4):
            if i > 0:
                setattr(self, f"patch_embed{i + 1}", ConvEmbed(embed_dims[i - 1], embed_dims[i]))
            g = self.grid_sizes[i]
            setattr(self, f"pos_embed{i + 1}", nn.Parameter(torch.zeros(1, g, g, embed_dims[i])))
            setattr(self, f"blocks{i + 1}", nn.Sequential(*[
                Block(embed_dims[i], num_heads[i], mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[j],
                      attention_head=attention_heads[j], pool_size=2 if i < 2 else 1,
                      use_layer_scale=use_layer_scale and i >= 2, layer_scale_init_value=layer_scale_init_value)
                for j in range(start, start + depths[i])]))
            self.feature_info.append({"num_chs": embed_dims[i], "reduction": 4 * 2 ** i, "module": f"blocks{i + 1}"})
            start += depths[i]
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for i in range(4):
            trunc_normal_(getattr(self, f"pos_embed{i + 1}"), std=.02)
        for name, m in self.named_modules():
            # ViT init as in the official code: zero head, truncated normal elsewhere.
            if isinstance(m, nn.Linear):
                if name.startswith("head"):
                    nn.init.zeros_(m.weight)
                else:
                    trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                trunc_normal_(m.weight, std=.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {f"pos_embed{i + 1}" for i in range(4)}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def _pos_embed(pos_embed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # At the trained resolution the table is used as is; otherwise resized bilinearly (official).
        H, W = x.shape[1], x.shape[2]
        if pos_embed.shape[1] == H and pos_embed.shape[2] == W:
            return pos_embed
        return F.interpolate(pos_embed.permute(0, 3, 1, 2), size=(H, W), mode="bilinear").permute(0, 2, 3, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = self.blocks1(x + self._pos_embed(self.pos_embed1, x))
        x = self.patch_embed2(x.permute(0, 3, 1, 2))
        x = self.blocks2(x + self._pos_embed(self.pos_embed2, x))
        x = self.patch_embed3(x.permute(0, 3, 1, 2))
        x = self.blocks3(x + self._pos_embed(self.pos_embed3, x))
        x = self.patch_embed4(x.permute(0, 3, 1, 2))
        x = self.blocks4(x + self._pos_embed(self.pos_embed4, x))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    # The official default cfg: bicubic resize, crop 0.9 (1.0 at 384), ImageNet mean/std, fixed size.
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.9, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj1", "classifier": "head",
        "paper_ids": "arXiv:2205.12956", "paper_name": "Inception Transformer",
        "origin_url": "https://github.com/sail-sg/iFormer", "license": "apache-2.0",
        **kwargs,
    }


# The official checkpoints (plain state dicts with exactly our keys), as listed in the official code.
_HF = "https://huggingface.co/sail/dl2/resolve/main/iformer/"
_AT_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)

default_cfgs = generate_default_cfgs({
    "iformer_small": _cfg(url=_HF + "iformer_small.pth"),
    "iformer_base": _cfg(url=_HF + "iformer_base.pth"),
    "iformer_large": _cfg(url=_HF + "iformer_large.pth"),
    "iformer_small_384": _cfg(url=_HF + "iformer_small_384.pth", **_AT_384),
    "iformer_base_384": _cfg(url=_HF + "iformer_base_384.pth", **_AT_384),
    "iformer_large_384": _cfg(url=_HF + "iformer_large_384.pth", **_AT_384),
})

_SMALL = dict(depths=(3, 3, 9, 3), embed_dims=(96, 192, 320, 384), num_heads=(3, 6, 10, 12),
              attention_heads=(1,) * 3 + (3,) * 3 + (7,) * 4 + (9,) * 5 + (11,) * 3)
_BASE = dict(depths=(4, 6, 14, 6), embed_dims=(96, 192, 384, 512), num_heads=(3, 6, 12, 16),
             attention_heads=(1,) * 4 + (3,) * 6 + (8,) * 7 + (10,) * 7 + (15,) * 6)
_LARGE = dict(depths=(4, 6, 18, 8), embed_dims=(96, 192, 448, 640), num_heads=(3, 6, 14, 20),
              attention_heads=(1,) * 4 + (3,) * 6 + (10,) * 9 + (12,) * 9 + (19,) * 8)


def _create(variant: str, pretrained: bool, arch: Dict[str, Any], default_size: int,
            **kwargs: Any) -> InceptionTransformer:
    # `img_size` may be overridden (the position embeddings are sized for it).
    return build_model_with_cfg(InceptionTransformer, variant, pretrained, **{**arch, "img_size": default_size, **kwargs})


@register_model
def iformer_small(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    return _create("iformer_small", pretrained, _SMALL, 224, **kwargs)


@register_model
def iformer_base(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    return _create("iformer_base", pretrained, _BASE, 224, **kwargs)


@register_model
def iformer_large(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    return _create("iformer_large", pretrained, _LARGE, 224, **kwargs)


@register_model
def iformer_small_384(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    return _create("iformer_small_384", pretrained, _SMALL, 384, **kwargs)


@register_model
def iformer_base_384(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    return _create("iformer_base_384", pretrained, _BASE, 384, **kwargs)


@register_model
def iformer_large_384(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    return _create("iformer_large_384", pretrained, _LARGE, 384, **kwargs)
