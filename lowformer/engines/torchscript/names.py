"""Serialized TorchScript code lines -> PyTorch module paths.

A frozen TorchScript file is one flat `forward`: once saved and loaded, its nodes no longer know
which module instance they came from (only the class's source line). The module it was made from
does: scripting and freezing it again in memory gives the same op sequence, and each node there
still carries its inlined call stack (`getModuleHierarchy`). Aligning the two aten op sequences maps
every code line of the file to a module path.
"""
from __future__ import annotations

import difflib
import re
import warnings
from typing import Dict, Iterator, List, Tuple

import torch
from torch import nn


_SOURCE = re.compile(r'Serialized\s+File "(code/__torch__/[^"]+)", line (\d+)')
_LEVEL = re.compile(r"([^.()]+)\(([^()]*)\)")


def graph_nodes(block) -> Iterator:
    """Every node of a TorchScript graph or block, nested blocks (if/loop bodies) included."""
    for n in block.nodes():
        yield n
        for b in n.blocks():
            yield from graph_nodes(b)


def _aten_nodes(graph) -> List:
    return [n for n in graph_nodes(graph) if n.kind().startswith("aten::")]


def hierarchy_path(hierarchy: str) -> str:
    """'SELF(LowFormer).stages(Sequential).2(Sequential).conv(Conv2d).SELF(Conv2d)' -> 'stages.2.conv'."""
    names = [name for name, _cls in _LEVEL.findall(hierarchy or "")]
    return ".".join(n for n in names if n not in ("SELF", "UNKNOWN_INSTANCE"))


def script_like_export(model: nn.Module, example: torch.Tensor, method: str = "script") -> torch.jit.ScriptModule:
    """Script (or trace) and freeze `model` as the export did, in memory (call stacks kept)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = model.eval()
        if method == "trace":
            with torch.no_grad():
                scripted = torch.jit.trace(model, example)
        else:
            scripted = torch.jit.script(model)
        return torch.jit.freeze(scripted)


def line_modules(ts_path: str, model: nn.Module, example: torch.Tensor,
                 method: str = "script") -> Tuple[Dict[str, str], float]:
    """({"code/...py:LINE": module path}, alignment ratio) for a saved frozen TorchScript file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(ts_path, map_location="cpu")
    rebuilt = script_like_export(model, example, method)
    ours = _aten_nodes(loaded.graph)
    theirs = _aten_nodes(rebuilt.graph)
    matcher = difflib.SequenceMatcher(None, [n.kind() for n in ours], [n.kind() for n in theirs], autojunk=False)
    out: Dict[str, str] = {}
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            src = _SOURCE.search(ours[block.a + k].sourceRange() or "")
            if not src:
                continue
            path = hierarchy_path(theirs[block.b + k].getModuleHierarchy())
            out.setdefault(f"{src.group(1)}:{src.group(2)}", path)
    return out, matcher.ratio()

