"""The preprocessing a classifier expects, recorded in manifests and applied by validation."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Tuple

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to `resize`, center-crop `crop`, scale to [0,1], normalize."""

    crop: int = 224
    resize: int = 236
    interpolation: str = "bicubic"
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD

    @property
    def crop_ratio(self) -> float:
        return self.crop / self.resize

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["crop_ratio"] = round(self.crop_ratio, 6)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Preprocessing":
        return cls(crop=int(d["crop"]), resize=int(d["resize"]), interpolation=str(d["interpolation"]),
                   mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]))

    def with_crop(self, crop: int, crop_ratio: float | None = None, rounding=math.ceil) -> "Preprocessing":
        """The same protocol at another input size (the resize keeps the crop ratio)."""
        ratio = crop_ratio if crop_ratio is not None else self.crop_ratio
        return replace(self, crop=crop, resize=int(rounding(crop / ratio - 1e-9)))

    def override(self, crop_ratio: float | None = None, interpolation: str | None = None,
                 mean=None, std=None) -> "Preprocessing":
        p = self
        if crop_ratio is not None:
            p = p.with_crop(p.crop, crop_ratio)
        if interpolation is not None:
            p = replace(p, interpolation=interpolation)
        if mean is not None:
            p = replace(p, mean=tuple(mean))
        if std is not None:
            p = replace(p, std=tuple(std))
        return p

    def transform(self):
        """torchvision's Resize / CenterCrop / ToTensor / Normalize on PIL images."""
        from torchvision import transforms as T

        modes = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
                 "nearest": T.InterpolationMode.NEAREST}
        return T.Compose([
            T.Resize(self.resize, interpolation=modes[self.interpolation]),
            T.CenterCrop(self.crop),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])


def lowformer_protocol(crop: int = 224) -> Preprocessing:
    """The paper's protocol: shorter side to ceil(crop / 0.95), bicubic, center crop, ImageNet stats."""
    return Preprocessing(crop=crop, resize=math.ceil(crop / 0.95 - 1e-9))


def from_timm_config(cfg: Dict[str, Any], crop: int | None = None) -> Preprocessing:
    """The eval preprocessing timm derives from a pretrained config (`resolve_data_config`: input
    size, crop_pct, interpolation, mean, std); like timm's eval transform, the resize is floored."""
    from timm.data import resolve_data_config

    d = resolve_data_config({}, pretrained_cfg=cfg)
    crop = crop or int(d["input_size"][-1])
    interp = d["interpolation"] if d["interpolation"] in ("bicubic", "bilinear", "nearest") else "bicubic"
    return Preprocessing(crop=crop, resize=int(math.floor(crop / float(d["crop_pct"]))), interpolation=interp,
                         mean=tuple(d["mean"]), std=tuple(d["std"]))
