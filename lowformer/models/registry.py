"""Model registry: the paper's LowFormer variants (built by timm) and any timm model as `timm:<name>`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
from torch import nn

from lowformer.core.errors import LowformerError
from lowformer.data.preprocess import Preprocessing, from_timm_config, lowformer_protocol


@dataclass(frozen=True)
class Published:
    """Numbers from the papers (ImageNet-1k top-1 %, MACs in M, A40 img/s at batch 200, ms at batch 1)."""

    top1: float
    macs_m: int
    gpu_throughput: Optional[int] = None
    gpu_latency_ms: Optional[float] = None
    params_m: Optional[float] = None  # the reference implementation's count (ARCHITECTURE.md)


@dataclass(frozen=True)
class ModelSpec:
    """What the toolchain knows about a model name, before building it."""

    name: str  # canonical: "b1", "e3", "timm:resnet50"
    timm_name: str
    family: str  # "lowformer" or "timm"
    display: str
    published: Optional[Published] = None
    has_weights: bool = True
    timm_kwargs: Dict[str, Any] = field(default_factory=dict)

    def preprocessing(self, image_size: int = 224) -> Preprocessing:
        if self.family == "lowformer":
            return lowformer_protocol(image_size)
        import timm

        cfg = timm.get_pretrained_cfg(self.timm_name)
        return from_timm_config(cfg.to_dict() if cfg is not None else {}, crop=image_size)

    @property
    def is_lowformer(self) -> bool:
        return self.family == "lowformer"


VARIANTS: Dict[str, ModelSpec] = {
    v.name: v for v in [
        ModelSpec("b0", "lowformer_b0", "lowformer", "LowFormer-B0", Published(78.4, 944, 5988, 0.30, 14.10)),
        ModelSpec("b1", "lowformer_b1", "lowformer", "LowFormer-B1", Published(79.9, 1410, 4237, 0.43, 17.94)),
        ModelSpec("b15", "lowformer_b15", "lowformer", "LowFormer-B1.5", Published(81.2, 2573, 2739, 0.66, 33.98)),
        ModelSpec("b2", "lowformer_b2", "lowformer", "LowFormer-B2", None, has_weights=False),
        ModelSpec("b3", "lowformer_b3", "lowformer", "LowFormer-B3", Published(83.6, 6098, 1162, 1.55, 57.09)),
        ModelSpec("e1", "lowformer_e1", "lowformer", "LowFormer-E1", Published(78.8, 1350, 6337, None, 18.90)),
        ModelSpec("e2", "lowformer_e2", "lowformer", "LowFormer-E2", Published(81.6, 3800, 2070, None, 22.75)),
        ModelSpec("e3", "lowformer_e3", "lowformer", "LowFormer-E3", Published(83.0, 5350, 1566, None, 41.32)),
    ]
}
RELEASED = ("b0", "b1", "b15", "b3", "e1", "e2", "e3")
_ALIASES = {"b1.5": "b15", "b1_5": "b15"}


def resolve(name: str) -> ModelSpec:
    """Map a user-typed name (`b1`, `B1.5`, `lowformer_e2`, `timm:resnet50`) to its spec."""
    raw = name.strip()
    key = raw.lower()
    if key.startswith("timm:"):
        timm_name = raw[5:]
        import timm

        if not timm_name or not timm.is_model(timm_name):
            hint = timm.list_models(f"*{timm_name}*")[:5] if timm_name else []
            extra = f" (did you mean {', '.join(hint)}?)" if hint else ""
            raise LowformerError(f"unknown timm model {timm_name!r}{extra}")
        spec = VARIANTS.get(timm_name.replace("lowformer_", ""))
        if timm_name.startswith("lowformer_") and spec is not None:
            return spec
        return ModelSpec(f"timm:{timm_name}", timm_name, "timm", timm_name)
    key = key.removeprefix("lowformer_").removeprefix("lowformer-")
    key = _ALIASES.get(key, key)
    if key not in VARIANTS:
        known = ", ".join(RELEASED + ("b2",))
        raise LowformerError(f"unknown model {name!r}: use one of {known}, or timm:<name> for any timm model")
    return VARIANTS[key]


def reference_config_to_timm(config: Dict[str, Any]) -> Dict[str, Any]:
    """Translate the reference code's backbone config (width_list, depth_list, flags) to timm's
    `LowFormer` arguments. Flags: fastit -> fused conv design (required), bigit / huge_model ->
    expand ratios, noattention -> attn=False, mlpremoved -> attn_mlp=False."""
    if not (config.get("fastit") and config.get("bb_convattention", True)):
        raise LowformerError("only the fused LowFormer design (fastit, bb_convattention) is supported")
    bigit, huge = bool(config.get("bigit")), bool(config.get("huge_model"))
    first = 6 if (bigit or huge) else 4
    return dict(
        width_list=list(config["width_list"]), depth_list=list(config["depth_list"]),
        fused_conv=True, attn_mlp_ratio=4,
        stem_expand_ratio=4 if huge else 2,
        downsample_expand_ratios=(first, first, first, 6 if bigit else 4),
        attn=not config.get("noattention", False),
        attn_mlp=not config.get("mlpremoved", False),
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_state_dict_shapes(name: str) -> Dict[str, torch.Size]:
    """Parameter/buffer shapes of a registered model without allocating memory."""
    import timm

    spec = resolve(name)
    with torch.device("meta"):
        model = timm.create_model(spec.timm_name, pretrained=False)
    return {k: v.shape for k, v in model.state_dict().items()}
