"""Building models: a registered name (or any timm model) with its checkpoint loaded strictly."""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

import torch
from torch import nn

from lowformer.models.checkpoints import load_checkpoint, read_state_dict
from lowformer.models.registry import ModelSpec, reference_config_to_timm, resolve


def _classifier_width(state_dict: Dict[str, torch.Tensor], spec: ModelSpec) -> Optional[int]:
    """Number of classes a checkpoint was trained for, read off its classifier weight."""
    import timm

    keys = ["classifier.weight", "head.op_list.3.linear.weight", "head.opseq.3.linear.weight"]
    cfg = timm.get_pretrained_cfg(spec.timm_name)
    if cfg is not None and isinstance(cfg.classifier, str):
        keys.append(f"{cfg.classifier}.weight")
    return next((int(state_dict[k].shape[0]) for k in keys if k in state_dict and state_dict[k].dim() == 2), None)


def create_model(name: str, checkpoint: Optional[str] = None, num_classes: Optional[int] = None,
                 **timm_kwargs: Any) -> nn.Module:
    """Build a model in eval mode; load `checkpoint` (official LowFormer or timm format) strictly.

    `num_classes` defaults to the checkpoint's classifier width (a fine-tuned model), else 1000."""
    import timm

    spec = resolve(name)
    state_dict = None
    if checkpoint is not None:
        state_dict = read_state_dict(checkpoint)
        num_classes = num_classes or _classifier_width(state_dict, spec)
    model = timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes or 1000,
                              **{**spec.timm_kwargs, **timm_kwargs})
    if state_dict is not None:
        load_checkpoint(model, state_dict, spec)
    return model.eval()


def create_from_reference_config(config: Dict[str, Any] | str, head_widths=(1536, 1600),
                                 num_classes: int = 1000) -> nn.Module:
    """A LowFormer with non-standard widths, from the reference code's config (dict or JSON)."""
    from timm.models.lowformer import LowFormer

    cfg = json.loads(config) if isinstance(config, str) else config
    return LowFormer(num_classes=num_classes, head_widths=tuple(head_widths),
                     **reference_config_to_timm(cfg)).eval()


