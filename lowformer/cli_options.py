"""Option values the CLI parses from text (lists, JSON, KEY=VALUE, triplets); errors name the flag."""
from __future__ import annotations

import json
from typing import Any, Dict, Optional, Sequence, Tuple

from lowformer.core.errors import LowformerError
from lowformer.training.recipe import parse_recipe_value


def parse_triplet(text: Optional[str], what: str) -> Optional[Tuple[float, float, float]]:
    """'0.485,0.456,0.406' -> a 3-tuple of floats (for --mean/--std)."""
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise LowformerError(f"{what} needs three comma-separated numbers, got {text!r}")
    return vals  # type: ignore[return-value]


def parse_sizes(text: str, what: str = "--image-sizes") -> Tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise LowformerError(f"{what} must be comma-separated integers, e.g. 128,160,192,224") from None
    if not sizes or any(s < 16 for s in sizes):
        raise LowformerError(f"{what} must list sizes of at least 16 pixels")
    return sizes


def parse_json_object(text: Optional[str], what: str) -> Dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise LowformerError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise LowformerError(f"{what} must be a JSON object, e.g. '{{\"drop_rate\": 0.1}}'")
    return value


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """`KEY=VALUE` strings (repeatable `--set`) to recipe overrides."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise LowformerError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_recipe_value(key.strip(), value)
    return out
