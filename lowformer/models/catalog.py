"""Model facts for `lowformer models` and `lowformer info`."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Dict, List, Optional

from lowformer.models.complexity import count_macs, stage_shapes
from lowformer.models.factory import create_model
from lowformer.models.registry import VARIANTS, count_parameters, resolve

# The paper's peer backbones and the timm model each corresponds to (six are ours: lowformer/models/peers/).
PEERS = [
    ("FastViT-T8", "fastvit_t8"), ("EfficientMod-XS", "efficientmod_xs"), ("MobileViG-M", "mobilevig_m"),
    ("iFormer-S", "iformer_small"), ("MobileOne-S1", "mobileone_s1"), ("MobileOne-S3", "mobileone_s3"),
    ("FFNet-1", "ffnet_1"), ("GhostNetV2 1.0", "ghostnetv2_100"), ("EfficientViT-M5 (MSRA)", "efficientvit_m5"),
    ("EdgeViT-XS", "edgevit_xs"), ("PVTv2-B0", "pvt_v2_b0"), ("FAT-B0", "fat_b0"), ("MobileNetV3-L", "mobilenetv3_large_100"),
    ("CoAtNet-0", "coatnet_0_rw_224"), ("EfficientFormerV2-S1", "efficientformerv2_s1"),
    ("ResNet-50", "resnet50"), ("SHViT-S4", "shvit_s4"), ("RepViT-M2.3", "repvit_m2_3"),
]


def model_table(computed: bool = False) -> List[Dict[str, Any]]:
    """The variants with params and MACs at 224: the published figures (instant), or counted on
    the built models (`computed`, some seconds per variant)."""
    rows = []
    for spec in VARIANTS.values():
        pub = spec.published
        if computed:
            model = create_model(spec.name)
            params, macs = count_parameters(model), count_macs(model, 224)
        else:
            params = int(round(pub.params_m * 1e6)) if pub and pub.params_m else None
            macs = int(pub.macs_m * 1e6) if pub else None
        rows.append({"name": spec.name, "display": spec.display, "timm_name": spec.timm_name,
                     "params": params, "macs": macs, "counted": computed,
                     "published": asdict(pub) if pub else {}, "has_weights": spec.has_weights})
    return rows


def peer_table() -> List[Dict[str, Any]]:
    import timm

    return [{"peer": peer, "timm_name": name, "available": bool(name) and timm.is_model(name)}
            for peer, name in PEERS]


def model_info(name: str, checkpoint: Optional[str] = None, image_size: int = 224) -> Dict[str, Any]:
    spec = resolve(name)
    model = create_model(name, checkpoint)
    return {"name": spec.name, "display": spec.display, "timm_name": spec.timm_name,
            "params": count_parameters(model), "macs": count_macs(model, image_size),
            "image_size": image_size, "checkpoint": checkpoint or "random-init",
            "preprocessing": spec.preprocessing(image_size).to_dict(),
            "stages": stage_shapes(model, image_size)}
