"""The preprocessing a classifier expects, recorded in manifests and applied by validation."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Tuple

from lowformer.core.errors import LowformerError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
# An image more elongated than this (resized long side > MAX_RESIZE_FACTOR x resize, i.e. an aspect
# ratio beyond 16:1) is cut to the region the center crop keeps first and only that region is resized:
# a 16000x1 image costs a 224x224 result, not a 236x3,776,000 intermediate (2.7 GB).
MAX_RESIZE_FACTOR = 16
_FILTER_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0, "nearest": 0.5}


def _positive_int(d: Dict[str, Any], key: str) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v != int(v) or v < 1:
        raise LowformerError(f"preprocessing {key} must be a positive whole number, not {v!r}")
    return int(v)


def _three_numbers(d: Dict[str, Any], key: str, positive: bool) -> Tuple[float, float, float]:
    v = d.get(key)
    ok = isinstance(v, (list, tuple)) and len(v) == 3 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
        for x in v)
    if not ok:
        kind = "three finite numbers > 0" if positive else "three finite numbers (one per RGB channel)"
        raise LowformerError(f"preprocessing {key} must be {kind}, not {v!r}")
    return tuple(float(x) for x in v)  # type: ignore[return-value]


class ResizeCenterCrop:
    """torchvision's `Resize(resize)` then `CenterCrop(crop)` on a PIL image, exactly; except that an
    image more elongated than MAX_RESIZE_FACTOR allows is first cut to the source region the crop keeps
    (plus the filter's support) and only that region is resized (`Image.resize(box=...)`): the same
    pixels within +-1 grey level for bicubic/bilinear, with memory bounded by the crop."""

    def __init__(self, resize: int, crop: int, interpolation: str):
        from torchvision import transforms as T

        self.resize, self.crop, self.interpolation = resize, crop, interpolation
        modes = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR,
                 "nearest": T.InterpolationMode.NEAREST}
        self._resize = T.Resize(resize, interpolation=modes[interpolation])
        self._center_crop = T.CenterCrop(crop)

    def __call__(self, img):
        w, h = img.size
        new_long = int(self.resize * max(w, h) / max(1, min(w, h)))  # torchvision's resized long side
        if new_long <= MAX_RESIZE_FACTOR * self.resize or self.crop > self.resize:
            return self._center_crop(self._resize(img))
        return self._crop_first(img, *((self.resize, new_long) if w <= h else (new_long, self.resize)))

    def _crop_first(self, img, w2: int, h2: int):
        from PIL import Image

        w, h = img.size
        c = self.crop
        left, top = int(round((w2 - c) / 2.0)), int(round((h2 - c) / 2.0))  # torchvision's CenterCrop
        sx, sy = w / w2, h / h2
        x0, x1, y0, y1 = left * sx, (left + c) * sx, top * sy, (top + c) * sy
        support = _FILTER_SUPPORT[self.interpolation]
        mx, my = support * max(1.0, sx) + 2, support * max(1.0, sy) + 2
        cx0, cx1 = max(0, math.floor(x0 - mx)), min(w, math.ceil(x1 + mx))
        cy0, cy1 = max(0, math.floor(y0 - my)), min(h, math.ceil(y1 + my))
        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}
        region = img.crop((cx0, cy0, cx1, cy1))
        return region.resize((c, c), resample[self.interpolation], box=(x0 - cx0, y0 - cy0, x1 - cx0, y1 - cy0))

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(resize={self.resize}, crop={self.crop}, interpolation={self.interpolation})"


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
        """From a manifest's `preprocessing`, range-checked: crop and resize positive whole numbers
        with resize >= crop, a known interpolation, mean/std three finite numbers with std > 0."""
        if not isinstance(d, dict):
            raise LowformerError(f"preprocessing must be an object, not {d!r}")
        return cls(crop=_positive_int(d, "crop"), resize=_positive_int(d, "resize"),
                   interpolation=d.get("interpolation"), mean=_three_numbers(d, "mean", positive=False),
                   std=_three_numbers(d, "std", positive=True)).checked()

    def checked(self) -> "Preprocessing":
        """Itself, or one LowformerError naming the first out-of-range value."""
        d = {"crop": self.crop, "resize": self.resize, "mean": self.mean, "std": self.std}
        _positive_int(d, "crop"), _positive_int(d, "resize")
        _three_numbers(d, "mean", positive=False), _three_numbers(d, "std", positive=True)
        if self.resize < self.crop:
            raise LowformerError(f"preprocessing resize ({self.resize}) must be >= crop ({self.crop})")
        if self.interpolation not in INTERPOLATIONS:
            raise LowformerError(f"preprocessing interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                                 f"not {self.interpolation!r}")
        return self

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
        return p.checked() if p is not self else p

    def transform(self):
        """torchvision's Resize / CenterCrop / ToTensor / Normalize on PIL images (see ResizeCenterCrop)."""
        from torchvision import transforms as T

        return T.Compose([
            ResizeCenterCrop(self.resize, self.crop, self.interpolation),  # Resize + CenterCrop, bounded
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
