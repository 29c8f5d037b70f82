"""Per-layer times from trtexec's --exportProfile JSON, joined with the inspector's layer map."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

from lowformer.core.errors import LowformerError
from lowformer.engines.base import LayerTiming

from lowformer.engines.tensorrt.inspector import JsonLike, _load_json, _nodes_from_name, engine_layers


def parse_layer_times(profile_json: JsonLike, layers: Optional[Dict[str, List[str]]] = None,
                      layer_types: Optional[Dict[str, str]] = None) -> List[LayerTiming]:
    """Per-layer times from `trtexec --exportProfile` JSON.

    The file is a list: an optional {"count": N} then {"name", "timeMs", "averageMs", "medianMs",
    "percentage"} per layer; timeMs is the total over the N profiled runs. `layers` (from
    parse_engine_layers) maps each layer to its ONNX nodes; without it they come from the name.
    """
    data = _load_json(profile_json)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise LowformerError("TensorRT profile JSON must be a list of layer records")
    flat: List[Any] = []
    for rec in data:  # tolerate one nested list per optimization profile
        flat.extend(rec if isinstance(rec, list) else [rec])
    count = next((int(r["count"]) for r in flat if isinstance(r, dict) and "count" in r and "name" not in r), None)
    out = []
    for rec in flat:
        if not isinstance(rec, dict) or "name" not in rec:
            continue
        name = str(rec["name"])
        total = float(rec.get("timeMs", 0.0))
        avg = float(rec.get("averageMs", 0.0))
        calls = count if count is not None else (int(round(total / avg)) if avg > 0 else 1)
        nodes = layers.get(name) if layers is not None and name in layers else _nodes_from_name(name, None)
        out.append(LayerTiming(name, (layer_types or {}).get(name, ""), total, calls, list(nodes or [])))
    return out


def layer_timings(profile_json: JsonLike, inspector_json: Optional[JsonLike] = None,
                  onnx_nodes: Optional[Iterable[str]] = None) -> List[LayerTiming]:
    """Profile times joined with the inspector's layer→ONNX-node map (trtexec output files)."""
    if inspector_json is None:
        return parse_layer_times(profile_json)
    info = engine_layers(inspector_json, onnx_nodes)
    return parse_layer_times(profile_json, {l.name: l.onnx_nodes for l in info},
                             {l.name: l.layer_type for l in info})


