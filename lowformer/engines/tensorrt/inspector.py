"""Engine layers and the ONNX nodes each covers, from the engine inspector / --exportLayerInfo JSON."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union


from lowformer.core.errors import LowformerError


JsonLike = Union[str, bytes, os.PathLike, Dict[str, Any], List[Any]]


# --------------------------------------------------------------------------- profile JSON parsing

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]*?)(?: \| [^\]]*)?\]")


@dataclass
class EngineLayer:
    name: str
    layer_type: str
    onnx_nodes: List[str]


def _load_json(data: JsonLike) -> Any:
    if isinstance(data, (dict, list)):
        return data
    if isinstance(data, os.PathLike) or (isinstance(data, str) and not data.lstrip().startswith(("{", "["))):
        p = Path(data)
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise LowformerError(f"cannot read TensorRT JSON {p}: {e}") from None
    try:
        return json.loads(data)
    except ValueError as e:
        raise LowformerError(f"not TensorRT JSON: {e}") from None


def _nodes_from_name(name: str, onnx_nodes: Optional[set]) -> List[str]:
    """ONNX nodes of a layer from its name alone (no Metadata: LAYER_NAMES_ONLY engines, old TensorRT)."""
    if name.startswith("Reformatting CopyNode") or name.startswith("copied_squeeze"):
        return []  # inserted by TensorRT, not from the ONNX graph
    name = re.sub(r" \[profile \d+\]$", "", name)
    parts = [p.strip() for p in name.split(" + ") if p.strip()]
    if onnx_nodes is not None:
        parts = [p for p in parts if p in onnx_nodes]
    return parts


def engine_layers(inspector_json: JsonLike, onnx_nodes: Optional[Iterable[str]] = None) -> List[EngineLayer]:
    """Layers of an engine from the engine inspector / `trtexec --exportLayerInfo` JSON.

    With DETAILED verbosity each layer has a `Metadata` string of `[ONNX Layer: <node>]` records
    (separated by \\x1e or \\x1f) naming the ONNX nodes it was fused from; otherwise the layer name
    (nodes joined by " + ") is used. `onnx_nodes` keeps only names that are real ONNX nodes
    (fused names also contain weight names such as "conv1.weight").
    """
    data = _load_json(inspector_json)
    if not isinstance(data, dict) or not isinstance(data.get("Layers"), list):
        raise LowformerError('TensorRT layer information must be a JSON object with a "Layers" list')
    known = set(onnx_nodes) if onnx_nodes is not None else None
    out = []
    for layer in data["Layers"]:
        if isinstance(layer, str):  # ProfilingVerbosity.LAYER_NAMES_ONLY
            out.append(EngineLayer(layer, "", _nodes_from_name(layer, known)))
            continue
        name = str(layer.get("Name", ""))
        meta = layer.get("Metadata") or ""
        nodes = [m.strip() for m in _ONNX_LAYER.findall(meta)] if meta else []
        if known is not None:
            nodes = [n for n in nodes if n in known]
        if not meta:
            nodes = _nodes_from_name(name, known)
        out.append(EngineLayer(name, str(layer.get("LayerType", "")), list(dict.fromkeys(nodes))))
    return out


def parse_engine_layers(inspector_json: JsonLike, onnx_nodes: Optional[Iterable[str]] = None) -> Dict[str, List[str]]:
    """{engine layer name: [ONNX node names it covers]} from inspector / --exportLayerInfo JSON."""
    return {layer.name: layer.onnx_nodes for layer in engine_layers(inspector_json, onnx_nodes)}

