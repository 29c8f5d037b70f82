"""FAT (Fully Adaptive Transformer), written in timm's style.

Fan, Huang, Zhou and He, "Lightweight Vision Transformer with Bidirectional Interaction", NeurIPS 2023
(arXiv 2306.00396). Architecture and parameter names follow the authors' code (qhfan/FAT,
classification/models.py) so its checkpoints load unchanged.

The token mixer, FASA, computes a local branch (1x1 query conv -> dw conv) and a global branch
(attention of every query pixel over keys/values of a "refined" strided-dw-conv downsampling of the input)
and lets them modulate each other: out = 1x1(L * sigmoid(G) * G * sigmoid(L)) = 1x1(SiLU(L) * SiLU(G)).

Export-friendly differences from the official code, none of which changes a parameter or the function:
- the optional RepLKNet CUDA kernel (DepthWiseConv2dImplicitGEMM, used when $LARGE_KERNEL_CONV_IMPL is set)
  is plain `nn.Conv2d`, which computes the same depthwise conv and has the same parameters;
- `nn.SyncBatchNorm` is `nn.BatchNorm2d` (same parameters and buffers; identical in eval mode);
- the key/value grid size is read off the downsampled tensor instead of `math.ceil(h / window)` on Python
  ints, so the traced graph is not specialised to one input size (stride-2 k5 p2 convs give exactly ceil).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, trunc_normal_
from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models._registry import generate_default_cfgs

__all__ = ["FAT", "FASA", "PUBLISHED"]

# Paper's ImageNet-1K table, as repeated in the official classification/README.md (224x224): params in M,
# FLOPs in G (= MACs). The FLOPs leave out FASA's two attention matmuls (q @ k^T and attn @ v), as module-hook
# counters do: the official code's convolutions + linear layers come to 0.701 / 1.173 / 2.038 / 4.425 GMACs
# (B0..B3), i.e. the printed 0.7 / 1.2 / 2.0 / 4.4. torch's FlopCounterMode, as this project counts, includes
# the matmuls: 0.754 / 1.243 / 2.131 / 4.632 GMACs. Params 4.49M / 7.82M / 13.47M / 29.20M.
PUBLISHED: Dict[str, Dict[str, float]] = {
    "fat_b0": {"params_m": 4.5, "gmacs": 0.7, "top1": 77.6},
    "fat_b1": {"params_m": 7.8, "gmacs": 1.2, "top1": 80.1},
    "fat_b2": {"params_m": 13.5, "gmacs": 2.0, "top1": 81.9},
    "fat_b3": {"params_m": 29.0, "gmacs": 4.4, "top1": 83.6},
}


def _dw_conv(dim: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(dim, dim, kernel_size, stride, kernel_size // 2, groups=dim)


def refined_downsample(dim: int, window_size: int, kernel_size: int = 5) -> nn.Module:
    """log2(window) stride-2 dw conv + BN steps with a 1x1 conv between steps (FAT's "fine-grained
    downsampling"); children named conv{i}, bn{i}, linear{i} as in the official weights."""
    if window_size == 1:
        return nn.Identity()
    steps = window_size.bit_length() - 1
    assert 2 ** steps == window_size and steps <= 3, "window_size must be 1, 2, 4 or 8"
    block = nn.Sequential()
    for i in range(steps):
        block.add_module(f"conv{i}", _dw_conv(dim, kernel_size, 2))
        block.add_module(f"bn{i}", nn.BatchNorm2d(dim))
        if i != steps - 1:
            block.add_module(f"linear{i}", nn.Conv2d(dim, dim, 1))
    return block


class FASA(nn.Module):
    """Fully Adaptive Self-Attention on (B, C, H, W)."""

    def __init__(self, dim: int, kernel_size: int, num_heads: int, window_size: int):
        super().__init__()
        self.q = nn.Conv2d(dim, dim, 1)
        self.kv = nn.Conv2d(dim, dim * 2, 1)
        self.local_mixer = _dw_conv(dim, kernel_size)
        self.mixer = nn.Conv2d(dim, dim, 1)
        self.dim_head = dim // num_heads
        self.pool = refined_downsample(dim, window_size, 5)
        self.window_size = window_size
        self.scale = self.dim_head ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q_local = self.q(x)
        q = q_local.reshape(b, -1, self.dim_head, h * w).transpose(-1, -2)  # (b, heads, hw, d)
        kv = self.kv(self.pool(x))
        n = kv.shape[-2] * kv.shape[-1]
        k, v = kv.reshape(b, 2, -1, self.dim_head, n).transpose(-1, -2).unbind(1)  # (b, heads, n, d) each
        attn = (self.scale * q @ k.transpose(-1, -2)).softmax(dim=-1)
        global_feat = (attn @ v).transpose(-1, -2).reshape(b, c, h, w)
        local_feat = self.local_mixer(q_local)
        # Bidirectional interaction: L * sigmoid(G) and G * sigmoid(L), multiplied; written as the official
        # code orders the products (self-modulated local first) so results match it bit for bit.
        local_feat = local_feat * torch.sigmoid(local_feat)
        local_feat = local_feat * torch.sigmoid(global_feat)
        return self.mixer(local_feat * global_feat)


class ConvFFN(nn.Module):
    """1x1 expand, GELU, (residual at stride 1) dw conv, BN, 1x1 project."""

    def __init__(self, in_chs: int, hidden_chs: int, kernel_size: int, stride: int, out_chs: int):
        super().__init__()
        self.stride = stride
        self.fc1 = nn.Conv2d(in_chs, hidden_chs, 1)
        self.act = nn.GELU()
        self.dwconv = _dw_conv(hidden_chs, kernel_size, stride)
        self.bn = nn.BatchNorm2d(hidden_chs)
        self.fc2 = nn.Conv2d(hidden_chs, out_chs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = x + self.dwconv(x) if self.stride == 1 else self.dwconv(x)
        return self.fc2(self.bn(x))


class FATBlock(nn.Module):
    """CPE, pre-norm FASA, pre-norm ConvFFN; the last block of a stage strides 2 in its FFN and shortcut."""

    def __init__(self, dim: int, out_dim: int, kernel_size: int, num_heads: int, window_size: int,
                 mlp_kernel_size: int, mlp_ratio: float, stride: int, drop_path: float = 0.0):
        super().__init__()
        self.cpe = _dw_conv(dim, kernel_size)
        self.norm1 = nn.GroupNorm(1, dim)
        self.attn = FASA(dim, kernel_size, num_heads, window_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.GroupNorm(1, dim)
        if stride == 1:
            self.downsample = nn.Identity()
        else:
            self.downsample = nn.Sequential(_dw_conv(dim, mlp_kernel_size, stride), nn.BatchNorm2d(dim),
                                            nn.Conv2d(dim, out_dim, 1))
        self.ffn = ConvFFN(dim, int(dim * mlp_ratio), mlp_kernel_size, stride, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.cpe(x)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return self.downsample(x) + self.drop_path(self.ffn(self.norm2(x)))


class FATStage(nn.Module):
    """`depth` FAT blocks; the last one maps to the next stage's width (and strides 2 unless last stage)."""

    def __init__(self, depth: int, dim: int, out_dim: int, kernel_size: int, num_heads: int, window_size: int,
                 mlp_kernel_size: int, mlp_ratio: float, drop_paths: Sequence[float], downsample: bool = True):
        super().__init__()
        self.blocks = nn.ModuleList([
            FATBlock(dim, dim if i < depth - 1 else out_dim, kernel_size, num_heads, window_size,
                     mlp_kernel_size, mlp_ratio, 2 if downsample and i == depth - 1 else 1, drop_paths[i])
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


class ConvBnRelu(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        # One `conv` Sequential (conv.0, conv.1) as in the official weights.
        self.conv = nn.Sequential(nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2),
                                  nn.BatchNorm2d(out_chs), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PatchEmbedding(nn.Module):
    """Stem: two stride-2 and two stride-1 3x3 conv-BN-ReLU, a 1x1 conv, GroupNorm(1)."""

    def __init__(self, in_chans: int = 3, out_chs: int = 96):
        super().__init__()
        self.conv1 = ConvBnRelu(in_chans, out_chs // 2, 3, 2)
        self.conv2 = ConvBnRelu(out_chs // 2, out_chs, 3, 2)
        self.conv3 = ConvBnRelu(out_chs, out_chs, 3, 1)
        self.conv4 = ConvBnRelu(out_chs, out_chs, 3, 1)
        self.conv5 = nn.Conv2d(out_chs, out_chs, 1)
        self.layernorm = nn.GroupNorm(1, out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.layernorm(self.conv5(x))


class FAT(nn.Module):
    """FAT backbone: stem (stride 4), four stages (downsampling inside each stage's last block), GroupNorm(1),
    average pool, linear head."""

    def __init__(self, embed_dims: Sequence[int] = (32, 80, 160, 256), depths: Sequence[int] = (2, 2, 6, 2),
                 kernel_sizes: Sequence[int] = (3, 5, 7, 9), num_heads: Sequence[int] = (2, 5, 10, 16),
                 window_sizes: Sequence[int] = (8, 4, 2, 1), mlp_kernel_sizes: Sequence[int] = (5, 5, 5, 5),
                 mlp_ratios: Sequence[float] = (4, 4, 4, 4), in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0, **kwargs: Any):
        super().__init__()
        assert global_pool in ("avg", ""), "FAT pools by mean only"
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate
        self.patch_embed = PatchEmbedding(in_chans, embed_dims[0])
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        self.feature_info: List[Dict[str, Any]] = []
        n = len(depths)
        for i in range(n):
            last = i == n - 1
            self.layers.append(FATStage(depths[i], embed_dims[i], embed_dims[i if last else i + 1], kernel_sizes[i],
                                        num_heads[i], window_sizes[i], mlp_kernel_sizes[i], mlp_ratios[i],
                                        dpr[sum(depths[:i]):sum(depths[:i + 1])], downsample=not last))
            self.feature_info.append(dict(num_chs=embed_dims[i if last else i + 1],
                                          reduction=4 * 2 ** min(i + 1, n - 1), module=f"layers.{i}"))
        self.norm = nn.GroupNorm(1, embed_dims[-1])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The official code keeps PyTorch's default init; a truncated normal for the head is timm's habit.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
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
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = self.avgpool(x).flatten(1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Official checkpoints are Swin-style ({"model": state_dict}); drop a DDP "module." prefix."""
    state_dict = state_dict.get("model", state_dict.get("state_dict", state_dict))
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def _cfg(url: str = "", **kwargs: Any) -> Dict[str, Any]:
    # Official eval transform (classification/data/build.py, config.py): resize int(256/224 * 224) bicubic,
    # center crop 224, ImageNet mean/std.
    return {"url": url, "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
            "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed.conv1.conv.0", "classifier": "head",
            "paper_ids": "arXiv:2306.00396", **kwargs}


# The official repository links no weights, hence no URLs.
default_cfgs = generate_default_cfgs({
    "fat_b0": _cfg(),
    "fat_b1": _cfg(),
    "fat_b2": _cfg(),
    "fat_b3": _cfg(),
})


def _create_fat(variant: str, pretrained: bool = False, **kwargs: Any) -> FAT:
    return build_model_with_cfg(FAT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


@register_model
def fat_b0(pretrained: bool = False, **kwargs: Any) -> FAT:
    """FAT-B0 (configs/FAT_b0.yaml): 32-80-160-256 channels, depths 2-2-6-2, 2-5-10-16 heads."""
    args = dict(embed_dims=(32, 80, 160, 256), depths=(2, 2, 6, 2), num_heads=(2, 5, 10, 16))
    return _create_fat("fat_b0", pretrained, **dict(args, **kwargs))


@register_model
def fat_b1(pretrained: bool = False, **kwargs: Any) -> FAT:
    """FAT-B1 (configs/FAT_b1.yaml): 48-96-192-384 channels, depths 2-2-6-2, 3-6-12-24 heads."""
    args = dict(embed_dims=(48, 96, 192, 384), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
    return _create_fat("fat_b1", pretrained, **dict(args, **kwargs))


@register_model
def fat_b2(pretrained: bool = False, **kwargs: Any) -> FAT:
    """FAT-B2 (configs/FAT_b2.yaml): 64-128-256-512 channels, depths 2-2-6-2, 2-4-8-16 heads."""
    args = dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 6, 2), num_heads=(2, 4, 8, 16))
    return _create_fat("fat_b2", pretrained, **dict(args, **kwargs))


@register_model
def fat_b3(pretrained: bool = False, **kwargs: Any) -> FAT:
    """FAT-B3 (configs/FAT_b3.yaml): 64-128-256-512 channels, depths 4-4-16-4, 2-4-8-16 heads."""
    args = dict(embed_dims=(64, 128, 256, 512), depths=(4, 4, 16, 4), num_heads=(2, 4, 8, 16))
    return _create_fat("fat_b3", pretrained, **dict(args, **kwargs))
