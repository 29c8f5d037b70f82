"""Parameter and MAC counts, and per-stage output shapes, measured on the real model."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, image_size: int = 224) -> int:
    """Multiply-accumulates of one image, from torch's FLOP counter (FLOPs / 2)."""
    x = torch.zeros(1, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(x)
    return counter.get_total_flops() // 2


def stage_shapes(model: nn.Module, image_size: int = 224) -> List[Dict[str, object]]:
    """Output shape of the stem, each stage and the logits (LowFormer / timm models with `stages`)."""
    names = [n for n in ("stem", "stages") if hasattr(model, n)]
    watched = []
    for n in names:
        mod = getattr(model, n)
        if n == "stages" and isinstance(mod, nn.Sequential):
            watched += [(f"stages.{i}", m) for i, m in enumerate(mod)]
        else:
            watched.append((n, mod))
    rows: List[Dict[str, object]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: rows.append(
        {"module": name, "shape": list(out.shape)})) for name, m in watched]
    try:
        with torch.no_grad():
            logits = model.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
    rows.append({"module": "logits", "shape": list(logits.shape)})
    return rows
