"""Runtime layer names -> PyTorch module paths, with the model's structure when it is known.

The placement itself (`module_of_name`, `GraphNeighbours`, `attribute_names`) is runtime-neutral and
lives in `lowformer.core.naming`, so calibration (below this layer) places ONNX Runtime's nodes the
same way; here the default structure is profiling's `ModelStructure`.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

from lowformer.core import naming
from lowformer.core.naming import GraphNeighbours
from lowformer.profiling.structure import ModelStructure

__all__ = ["GraphNeighbours", "attribute_names", "module_of_name"]


def module_of_name(name: str, structure: Optional[ModelStructure] = None) -> str:
    """Module path of a runtime node/layer name ('' when the name itself carries none)."""
    return naming.module_of_name(name, structure)


def attribute_names(names: Sequence[str], structure: Optional[ModelStructure] = None,
                    graph: Optional[GraphNeighbours] = None) -> Dict[str, Tuple[str, str]]:
    """{name: (module path, how)}; how is 'name', 'graph', 'order' or 'none' (see core.naming)."""
    return naming.attribute_names(names, structure, graph)
