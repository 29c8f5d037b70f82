"""ONNX node names <-> PyTorch module paths.

torch's TorchScript-based ONNX exporter names nodes after the module scope, one segment per level:
`/stages/stages.2/stages.2.1/attn/main/main.0/Reshape`. A segment's last dotted part is the child's
attribute name, so the module path is `stages.2.1.attn.main.0`.
"""
from __future__ import annotations

import re
from collections import deque
from typing import Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Tuple


def module_path_of_node(node_name: str) -> str:
    """PyTorch module path of an exported ONNX node ('' for nodes outside any module)."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) <= 1:
        return ""
    return ".".join(seg.split(".")[-1] for seg in parts[:-1])


def node_in_module(node_name: str, module_path: str) -> bool:
    path = module_path_of_node(node_name)
    return path == module_path or path.startswith(module_path + ".")


# --------------------------------------------------------------------------- runtime node names
# Runtimes rename what they rewrite but keep the scope as a prefix: ONNX Runtime's
# `.../Conv_output_0_nchwc`, `.../Conv_token_49` (QLinearConv) and `.../MatMul/MatMulScaleFusion/`;
# Q/DQ nodes are named after the tensor they (de)quantize (`/stem/stem.0/act/HardSwish_output_0_
# QuantizeLinear`, `classifier.weight_DequantizeLinear`). Nodes without any scope (onnxsim's `Slice_11`,
# ORT's `ReorderInput_token_59`, `input_QuantizeLinear`) are placed by the graph: the layer they feed,
# else the layer that feeds them (see `GraphNeighbours`). Runtime-neutral: the profiler (module rows)
# and calibration (per-block latency) both place nodes with these.

# Casts that FP16 conversion (onnxconverter-common) and ONNX Runtime insert name themselves after
# the node or initializer they serve: `InsertedPrecisionFreeCast_stages.3.0.main.conv.bias`.
_RUNTIME_PREFIX = re.compile(r"^(?:InsertedPrecisionFreeCast_)+")
_PARAM = re.compile(r"^(?P<module>[A-Za-z_][\w]*(?:\.[\w]+)*)\.(?:weight|bias|running_mean|running_var)(?:_|$)")


class KnownModules(Protocol):
    """What `module_of_name` asks of a model's structure (profiling's ModelStructure)."""

    def longest_known_prefix(self, parts: Sequence[str]) -> Optional[str]: ...


def module_of_name(name: str, structure: Optional[KnownModules] = None) -> str:
    """Module path of a runtime node/layer name ('' when the name itself carries none)."""
    name = _RUNTIME_PREFIX.sub("", name)
    if "/" in name:
        # `input_cast_to_/stem/stem.0/conv/Conv`: a prefixed copy of the scoped name it serves.
        path = module_path_of_node(name[name.index("/"):])
        parts = path.split(".") if path else []
        known = structure.longest_known_prefix(parts) if structure is not None else None
        if known:
            return known
        # Without the model (or a model that names its modules otherwise): module attribute names are
        # lower-case; runtimes append op names (`MatMul/MatMulScaleFusion`), which start with a capital.
        keep: List[str] = []
        for p in parts:
            if p[:1].isupper():
                break
            keep.append(p)
        return ".".join(keep)
    m = _PARAM.match(name)  # parameter-named nodes: `classifier.weight_DequantizeLinear`
    if m:
        parts = m.group("module").split(".")
        return (structure.longest_known_prefix(parts) if structure is not None else None) or m.group("module")
    return ""


class GraphNeighbours:
    """Producer/consumer links of a (runtime-optimized) ONNX graph, to place unscoped nodes."""

    def __init__(self, nodes: Iterable[Tuple[str, Sequence[str], Sequence[str]]]):
        self.inputs: Dict[str, List[str]] = {}
        self.outputs: Dict[str, List[str]] = {}
        self.producer: Dict[str, str] = {}
        self.consumers: Dict[str, List[str]] = {}
        for name, ins, outs in nodes:
            self.inputs[name] = [t for t in ins if t]
            self.outputs[name] = [t for t in outs if t]
            for t in self.outputs[name]:
                self.producer[t] = name
            for t in self.inputs[name]:
                self.consumers.setdefault(t, []).append(name)

    def __contains__(self, name: str) -> bool:
        return name in self.inputs

    def _walk(self, start: str, step, resolve, max_depth: int) -> str:
        seen = {start}
        queue = deque([(start, 0)])
        while queue:
            node, depth = queue.popleft()
            if depth >= max_depth:
                continue
            for nxt in step(node):
                if nxt in seen:
                    continue
                seen.add(nxt)
                found = resolve(nxt)
                if found:
                    return found
                queue.append((nxt, depth + 1))
        return ""

    def place(self, name: str, resolve, max_depth: int = 6) -> str:
        """Module of the nearest scoped consumer (the layer it feeds), else of the nearest producer."""
        if name not in self:
            return ""
        down = lambda n: [c for t in self.outputs.get(n, []) for c in self.consumers.get(t, [])]  # noqa: E731
        up = lambda n: [self.producer[t] for t in self.inputs.get(n, []) if t in self.producer]  # noqa: E731
        return self._walk(name, down, resolve, max_depth) or self._walk(name, up, resolve, max_depth)


def attribute_names(names: Sequence[str], structure: Optional[KnownModules] = None,
                    graph: Optional[GraphNeighbours] = None,
                    resolve: Optional[Callable[[str], str]] = None) -> Dict[str, Tuple[str, str]]:
    """{name: (module path, how)}; how is 'name', 'graph', 'order' (execution-order neighbour) or 'none'.

    `names` is in execution order: a node neither named nor in the graph (ORT expands some function
    ops, e.g. HardSwish into HardSigmoid+Mul, after the graph is saved) takes the module of the next
    placed node, else of the previous one. `resolve` (name -> label, '' for none) replaces
    `module_of_name` when the labels wanted are not module paths (calibration's blocks).
    """
    cache: Dict[str, str] = {}
    label = resolve or (lambda n: module_of_name(n, structure))

    def by_name(n: str) -> str:
        if n not in cache:
            cache[n] = label(n)
        return cache[n]

    out: Dict[str, Tuple[str, str]] = {}
    for n in names:
        mod = by_name(n)
        if mod:
            out[n] = (mod, "name")
        elif graph is not None and n in graph:
            mod = graph.place(n, by_name)
            out[n] = (mod, "graph") if mod else ("", "none")
        else:
            out[n] = ("", "none")
    order = list(dict.fromkeys(names))
    for i, n in enumerate(order):
        if out[n][0]:
            continue
        later = next((out[m][0] for m in order[i + 1:] if out[m][0] and out[m][1] != "order"), "")
        earlier = next((out[m][0] for m in reversed(order[:i]) if out[m][0]), "")
        if later or earlier:
            out[n] = (later or earlier, "order")
    return out
