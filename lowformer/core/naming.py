"""ONNX node names <-> PyTorch module paths.

torch's TorchScript-based ONNX exporter names nodes after the module scope, one segment per level:
`/stages/stages.2/stages.2.1/attn/main/main.0/Reshape`. A segment's last dotted part is the child's
attribute name, so the module path is `stages.2.1.attn.main.0`.
"""
from __future__ import annotations


def module_path_of_node(node_name: str) -> str:
    """PyTorch module path of an exported ONNX node ('' for nodes outside any module)."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) <= 1:
        return ""
    return ".".join(seg.split(".")[-1] for seg in parts[:-1])


def node_in_module(node_name: str, module_path: str) -> bool:
    path = module_path_of_node(node_name)
    return path == module_path or path.startswith(module_path + ".")
