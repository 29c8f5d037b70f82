"""The per-variant training recipe of the paper, and range-checked overrides of it."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Optional, Tuple


from lowformer.core.errors import LowformerError


@dataclass(frozen=True)
class Recipe:
    """Every hyper-parameter of the released configs (configs/cls/imagenet/*.yaml)."""

    lr_per_128: float = 2.5e-4  # peak lr for 128 images; scaled linearly with the total batch
    weight_decay: float = 0.1
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_epochs: Optional[float] = None  # None: 20 of 300 epochs, scaled down for short runs
    min_lr: float = 0.0
    clip_grad: Optional[float] = 2.0
    smoothing: float = 0.1
    bce: bool = True
    mixup_alpha: float = 0.1  # the release picks mixup or cutmix (50/50) for every batch
    cutmix_alpha: float = 0.1
    mix_prob: float = 1.0
    randaug: Optional[str] = "rand-n1-m3-mstd1.0-inc1"  # timm RandAugment string, None disables
    reprob: float = 0.0  # random erasing probability
    crop_scale: Tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    drop_path: float = 0.05  # linear over depth (timm's drop_path_rate)
    ema_decay: float = 0.9998  # 0 disables the EMA
    ema_warmup_steps: int = 2000  # the release's decay * (1 - exp(-step / 2000))
    mesa: Optional[Tuple[float, float]] = None  # (start at progress, weight): EMA self-distillation

    def to_dict(self) -> Dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


_HEAVY = dict(randaug="rand-n2-m5-mstd1.0-inc1", reprob=0.2, drop_path=0.1)
# Per-variant values of the release; lr_per_128 = base_lr * 128 / base_batch_size.
RELEASED_RECIPES: Dict[str, Recipe] = {
    "b0": Recipe(lr_per_128=0.000332 * 128 / 170),
    "b1": Recipe(),
    "b15": Recipe(lr_per_128=0.000166 * 128 / 170, randaug="rand-n2-m6-mstd1.0-inc1", mixup_alpha=0.3,
                  cutmix_alpha=0.3, drop_path=0.1),
    "b2": Recipe(lr_per_128=0.000125 * 128 / 170, mixup_alpha=0.2, cutmix_alpha=0.2, **_HEAVY),
    "b3": Recipe(lr_per_128=0.000094 * 128 / 75, mixup_alpha=0.2, cutmix_alpha=0.2, mesa=(0.25, 2.0), **_HEAVY),
    "e1": Recipe(lr_per_128=0.0001 * 128 / 100, randaug="rand-n2-m6-mstd1.0-inc1", mixup_alpha=0.3,
                 cutmix_alpha=0.3, drop_path=0.1),
    "e2": Recipe(lr_per_128=0.0001 * 128 / 50, mixup_alpha=0.2, cutmix_alpha=0.2, mesa=(0.25, 2.0), **_HEAVY),
    "e3": Recipe(lr_per_128=0.0000625 * 128 / 50, mixup_alpha=0.3, cutmix_alpha=0.3, mesa=(0.25, 2.0), **_HEAVY),
}
RECIPE_KEYS = tuple(f.name for f in dataclasses.fields(Recipe))


def recipe_for(model: str, overrides: Optional[Dict[str, Any]] = None) -> Recipe:
    """The released recipe of a LowFormer variant (B1's for other models), with overrides."""
    from lowformer.models.registry import resolve

    spec = resolve(model)
    base = RELEASED_RECIPES.get(spec.name, Recipe()) if spec.is_lowformer else Recipe()
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(RECIPE_KEYS))
    if unknown:
        raise LowformerError(f"unknown recipe key(s) {', '.join(unknown)}; known: {', '.join(RECIPE_KEYS)}")
    checked = {k: _checked(k, v, getattr(Recipe(), k)) for k, v in overrides.items()}
    for k, v in checked.items():
        _in_range(k, v)
    return replace(base, **checked)


_OPTIONAL = {"warmup_epochs": 0.0, "clip_grad": 0.0, "randaug": "", "mesa": (0.0, 0.0)}


def _checked(key: str, value: Any, default: Any) -> Any:
    """An override with the type of the recipe item (pairs as tuples), or one clear error."""
    example = _OPTIONAL.get(key, default)
    if value is None and key in _OPTIONAL:
        return None
    if isinstance(example, bool):
        ok = isinstance(value, bool)
    elif isinstance(example, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        value = int(value) if isinstance(example, int) and ok else value
    elif isinstance(example, tuple):
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        value = tuple(float(v) for v in value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        kind = {bool: "true or false", tuple: "a pair like [0.08, 1.0]", str: "a string"}.get(
            type(example), "a non-negative number")
        raise LowformerError(f"recipe item {key} must be {kind}" + (" or none" if key in _OPTIONAL else "")
                             + f", not {value!r}")
    return value


# key -> (test, what it must be); each value (each element of a pair) must also be finite.
_UNIT = (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]")
_RANGES = {
    "lr_per_128": (lambda v: v > 0, "a positive learning rate"),
    "weight_decay": (lambda v: v >= 0, "a non-negative number"),
    "betas": (lambda v: all(0.0 <= b < 1.0 for b in v), "a pair of numbers in [0, 1), e.g. [0.9, 0.999]"),
    "eps": (lambda v: v > 0, "a positive number"),
    "smoothing": (lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
    "mix_prob": _UNIT, "reprob": _UNIT, "hflip": _UNIT,
    "crop_scale": (lambda v: 0.0 < v[0] <= v[1] <= 1.0, "an ordered pair [min, max] within (0, 1], e.g. [0.08, 1.0]"),
    "drop_path": (lambda v: 0.0 <= v < 1.0, "a rate in [0, 1)"),
    "ema_decay": (lambda v: 0.0 <= v < 1.0, "a decay in [0, 1) (0 disables the EMA)"),
    "mesa": (lambda v: 0.0 <= v[0] <= 1.0 and v[1] >= 0, "a pair [start fraction in [0, 1], weight >= 0]"),
}


def _in_range(key: str, value: Any) -> None:
    """One clear error for a well-typed but meaningless value (crop_scale [2, 1], hflip 1.5, lr 0, inf)."""
    if value is None or isinstance(value, (bool, str)):
        return
    numbers = value if isinstance(value, tuple) else (value,)
    test, what = _RANGES.get(key, (lambda v: True, "a finite number"))
    if not all(math.isfinite(v) for v in numbers) or not test(value):
        shown = list(value) if isinstance(value, tuple) else value
        raise LowformerError(f"recipe item {key} must be {what}, not {shown!r}")


def parse_recipe_value(key: str, text: str) -> Any:
    """`--set key=value`: JSON values (numbers, lists, true/false), `none`/`null`, or a string."""
    if key not in RECIPE_KEYS:
        raise LowformerError(f"unknown recipe key {key!r}; known: {', '.join(RECIPE_KEYS)}")
    if text.strip().lower() in ("none", "null", "off"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


