"""Can TensorRT's ONNX parser take this graph? A static check that needs neither TensorRT nor a GPU.

Every node is checked against what onnx-tensorrt documents for the targeted TensorRT major
(onnx_tensorrt_ops.json beside this file: the operator table of onnx-tensorrt's docs/operators.md,
its restrictions as data, and the explicit-quantization rules for Q/DQ nodes). One problem is one
line naming the node, its op and the LowFormer module it came from (exported node names are
module-scoped). An INT8 graph quantized for `--target cpu` (uint8 activations, zero points != 0) is
refused in one line that says to export with `--target tensorrt`.

What it cannot see: restrictions on shapes or values only known at build time (listed as `unchecked`
in the JSON), kernel availability for a given GPU, and anything newer than the documented table.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Union

from lowformer.core.errors import LowformerError
from lowformer.core.naming import module_path_of_node

OPS_JSON = Path(__file__).with_name("onnx_tensorrt_ops.json")
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@functools.lru_cache(maxsize=1)
def ops_data() -> Dict[str, Any]:
    return json.loads(OPS_JSON.read_text())


def supported_majors() -> List[int]:
    return sorted(int(m) for m in ops_data()["majors"])


def _table(major: int) -> Dict[str, Any]:
    data = ops_data()
    if str(major) not in data["majors"]:
        raise LowformerError(f"no onnx-tensorrt operator table for TensorRT {major}.x "
                             f"(known: {', '.join(str(m) for m in supported_majors())})")
    return data["tables"][data["majors"][str(major)]["table"]]


def tables_differ() -> bool:
    """Whether the check depends on the TensorRT major at all (it does not while all share one table)."""
    return len({v["table"] for v in ops_data()["majors"].values()}) > 1


# --------------------------------------------------------------------------- graph helpers

class _Graph:
    def __init__(self, model):
        import onnx
        from onnx import numpy_helper

        self.onnx, self.numpy_helper = onnx, numpy_helper
        g = model.graph
        self.nodes = list(g.node)
        self.inits = {i.name: i for i in g.initializer}
        self.const_nodes = {o: n for n in self.nodes if n.op_type == "Constant" for o in n.output if o}
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: Dict[str, List[Any]] = {}
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.consumed: Set[str] = set(self.consumers)
        self.consumed |= {o.name for o in g.output}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)

    def is_constant(self, name: str, depth: int = 0) -> bool:
        """An initializer, a Constant's output, or Identity/Cast/Reshape/Unsqueeze of constants (folded)."""
        if name in self.inits or name in self.const_nodes:
            return True
        n = self.producer.get(name)
        if n is None or depth > 8 or n.op_type not in ("Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze"):
            return False
        return all(self.is_constant(i, depth + 1) for i in n.input if i)

    def value(self, name: str, depth: int = 0):
        """The numpy value of a constant tensor (None when not a plain constant)."""
        if name in self.inits:
            return self.numpy_helper.to_array(self.inits[name])
        n = self.const_nodes.get(name)
        if n is not None:
            attr = next((a for a in n.attribute if a.name == "value"), None)
            return self.numpy_helper.to_array(attr.t) if attr is not None else None
        n = self.producer.get(name)
        if n is not None and n.op_type == "Identity" and depth < 8:
            return self.value(n.input[0], depth + 1)
        return None

    def dtype(self, name: str) -> Optional[str]:
        """ONNX type name of a constant, or of a Q output (its zero point's type); None if unknown."""
        t = self.onnx.TensorProto
        if name in self.inits:
            return t.DataType.Name(self.inits[name].data_type)
        n = self.const_nodes.get(name)
        if n is not None:
            attr = next((a for a in n.attribute if a.name == "value"), None)
            return t.DataType.Name(attr.t.data_type) if attr is not None else None
        n = self.producer.get(name)
        if n is not None and n.op_type == "QuantizeLinear":
            return _quantized_type(self, n)
        if n is not None and n.op_type == "Identity":
            return self.dtype(n.input[0])
        return None

    def shape(self, name: str) -> Optional[List[int]]:
        if name in self.inits:
            return list(self.inits[name].dims)
        v = self.value(name)
        return list(v.shape) if v is not None else None


def _attr(node, name: str, default=None):
    from onnx import helper

    a = next((a for a in node.attribute if a.name == name), None)
    if a is None:
        return default
    v = helper.get_attribute_value(a)
    return v.decode() if isinstance(v, bytes) else v


def _quantized_type(g: _Graph, q) -> str:
    """The integer type a QuantizeLinear produces: its zero point's type, else output_dtype, else UINT8."""
    if len(q.input) > 2 and q.input[2]:
        zt = g.dtype(q.input[2])
        if zt:
            return zt
    out = _attr(q, "output_dtype", 0)
    return g.onnx.TensorProto.DataType.Name(out) if out else "UINT8"  # ONNX's default is uint8


def _module_of(g: _Graph, node, depth: int = 0) -> str:
    """The module a node came from: from its scoped name, else (Q/DQ nodes added by the quantizer, named
    after tensors) from the node that consumes its output."""
    path = module_path_of_node(node.name)
    if path or depth > 4:
        return path
    for out in node.output:
        for n in g.consumers.get(out, []):
            path = _module_of(g, n, depth + 1)
            if path:
                return path
    return ""


def _where(g: _Graph, node) -> str:
    return f"node {node.name or '(unnamed)'} ({node.op_type}, module {_module_of(g, node) or '(top level)'})"


# --------------------------------------------------------------------------- the rules

def _check_restrictions(g: _Graph, node, rules: Iterable[Dict[str, Any]], label: str) -> List[str]:
    out = []
    for r in rules:
        kind = r["kind"]
        if kind == "constant_input":
            i = r["input"]
            if len(node.input) > i and node.input[i] and not g.is_constant(node.input[i]):
                out.append(f"`{r['name']}` (input {i}) must be a constant for {label}")
        elif kind == "constant_input_below":
            i = r["input"]
            if len(node.input) > i and node.input[i]:
                v = g.value(node.input[i])
                if v is not None and v.size and int(v.max()) >= r["limit"]:
                    out.append(f"`{r['name']}` must be below {r['limit']} for {label}")
        elif kind == "attr_in":
            v = _attr(node, r["attr"], r.get("default"))
            if v is not None and v not in r["values"]:
                out.append(f"{r['attr']}={v!r} is not supported by {label} (supported: {', '.join(r['values'])})")
        elif kind == "attr_equals":
            v = _attr(node, r["attr"], r.get("default"))
            if v is not None and v != r["value"]:
                out.append(f"{r['attr']}={v!r} is not supported by {label} (must be {r['value']!r})")
        elif kind == "ones_or_empty":
            v = _attr(node, r["attr"], [])
            if v and any(int(x) != 1 for x in v):
                out.append(f"{r['attr']}={list(v)} is not supported by {label} (must be empty or all ones)")
        elif kind == "spatial_dims":
            v = _attr(node, r["attr"], None)
            if v is not None and len(v) not in r["values"]:
                out.append(f"{len(v)}-D {node.op_type} is not supported by {label} "
                           f"(only {' or '.join(str(x) + '-D' for x in r['values'])})")
        elif kind == "attrs_absent":
            bad = [a.name for a in node.attribute if a.name in r["attrs"]]
            if bad:
                out.append(f"attribute {bad[0]} is not supported by {label}")
        elif kind == "outputs_used_at_most":
            used = [o for o in node.output[r["count"]:] if o and o in g.consumed]
            if used:
                out.append(f"output {r['name']} is used, which {label} does not support")
    return out


def _check_qdq(g: _Graph, node, rules: Dict[str, Any], label: str) -> List[str]:
    import numpy as np

    out = []
    is_q = node.op_type == "QuantizeLinear"
    x, scale = node.input[0], node.input[1] if len(node.input) > 1 else ""
    zp = node.input[2] if len(node.input) > 2 else ""
    if not scale:
        return [f"has no scale, which {label} needs"]
    if not g.is_constant(scale):
        out.append(f"scale {scale} is computed at run time; {label} needs a build-time constant scale")
    else:
        s = g.value(scale)
        if s is not None and s.size and not bool((np.asarray(s, dtype=np.float64) > 0).all()):
            out.append(f"scale {scale} has values <= 0; {label} needs positive scales")
    if is_q:
        qtype = _quantized_type(g, node)
        xt = g.dtype(x)
        if xt is not None and xt not in rules["quantize_input_types"]:
            out.append(f"quantizes a {xt} tensor; {label} quantizes only {', '.join(rules['quantize_input_types'])}")
    else:
        qtype = g.dtype(x)
        if qtype is not None and qtype not in rules["dequantize_input_types"]:
            what = "an int32 bias (quantized biases: keep them float)" if qtype == "INT32" else f"a {qtype} tensor"
            out.append(f"dequantizes {what}; {label} dequantizes only {', '.join(rules['dequantize_input_types'])}")
    if qtype == rules["cpu_target_marker"]:
        out.append(f"is a {qtype} Q/DQ; {label} quantizes to signed {', '.join(rules['zero_point_types'])} only")
    if zp:
        if not g.is_constant(zp):
            out.append(f"zero point {zp} is computed at run time; {label} needs constant zero points of 0")
        else:
            z = g.value(zp)
            if z is not None and z.size and bool((np.asarray(z).astype(np.float64) != 0).any()):
                out.append(f"zero point {zp} is not 0; {label} supports symmetric quantization only (zero points 0)")
    s_shape = g.shape(scale) if scale and g.is_constant(scale) else None
    if s_shape is not None and int(np.prod(s_shape or [1])) > 1:
        weight = g.is_constant(x) or (not is_q and x in g.producer and g.producer[x].op_type == "QuantizeLinear"
                                      and g.is_constant(g.producer[x].input[0]))
        if not weight:
            out.append(f"quantizes an activation per channel ({int(np.prod(s_shape))} scales); {label} "
                       "quantizes activations per tensor (one scale)")
        elif len(s_shape) != rules["per_channel_scale_rank"]:
            out.append(f"has a {len(s_shape)}-D scale; {label} takes per-channel scales as 1-D tensors")
        else:
            wshape = g.shape(x) if g.is_constant(x) else g.shape(g.producer[x].input[0])
            axis = int(_attr(node, "axis", 1))
            if wshape is not None and wshape:
                axis = axis + len(wshape) if axis < 0 else axis
                if not 0 <= axis < len(wshape) or wshape[axis] != s_shape[0]:
                    out.append(f"has {s_shape[0]} scales for axis {axis} of a {wshape} weight; {label} needs one "
                               "scale per channel along `axis`")
    return out


def _check(model, major: int, label: str) -> List[str]:
    table = _table(major)
    rules = ops_data()["qdq"]
    g = _Graph(model)
    problems = []
    lo, hi = table["opset"]
    if g.opset is not None and not lo <= g.opset <= hi:
        problems.append(f"the graph uses ONNX opset {g.opset}; onnx-tensorrt documents opsets {lo}-{hi} for {label}: "
                        "export with --opset 17")
    supported, unsupported = table["supported"], set(table["unsupported"])
    for node in g.nodes:
        where = _where(g, node)
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: op of domain {node.domain!r} is not an ONNX op {label} parses "
                            "(it needs a TensorRT plugin)")
            continue
        spec = supported.get(node.op_type)
        if spec is None:
            why = "not supported by" if node.op_type in unsupported else "not in the onnx-tensorrt operator table for"
            problems.append(f"{where}: {why} {label}")
            continue
        for msg in _check_restrictions(g, node, spec.get("restrictions", []), label):
            problems.append(f"{where}: {msg}")
        if node.op_type in _QDQ:
            for msg in _check_qdq(g, node, rules, label):
                problems.append(f"{where}: {msg}")
    return problems


def _load(onnx_path_or_model):
    import onnx

    if isinstance(onnx_path_or_model, onnx.ModelProto):
        return onnx_path_or_model, "the ONNX"
    p = Path(onnx_path_or_model)
    if not p.is_file():
        raise LowformerError(f"no such ONNX file: {p}")
    try:
        return onnx.load(str(p), load_external_data=False), p.name
    except Exception as e:
        raise LowformerError(f"cannot read {p} as ONNX: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None


def check_onnx_for_tensorrt(onnx_path_or_model: Union[str, os.PathLike, Any],
                            trt_major: Optional[int] = None) -> List[str]:
    """Problems TensorRT `trt_major`'s ONNX parser would have with the graph, one line each ([] if none).

    trt_major None: the problems every supported major has (what can be said before knowing the device).
    """
    model, _ = _load(onnx_path_or_model)
    if trt_major is not None:
        return _check(model, int(trt_major), f"TensorRT {int(trt_major)}")
    label = "TensorRT " + "/".join(str(m) for m in supported_majors())
    per_major = [_check(model, m, label) for m in supported_majors()]
    common = set(per_major[0]).intersection(*per_major[1:])
    return [p for p in per_major[0] if p in common]


def is_cpu_target_int8(onnx_path_or_model) -> bool:
    """An INT8 graph quantized for ONNX Runtime on CPU (uint8 activations), not for TensorRT."""
    model, _ = _load(onnx_path_or_model)
    g = _Graph(model)
    marker = ops_data()["qdq"]["cpu_target_marker"]
    return any(n.op_type == "QuantizeLinear" and _quantized_type(g, n) == marker for n in g.nodes) or \
        any(n.op_type == "DequantizeLinear" and g.dtype(n.input[0]) == marker for n in g.nodes)


def require_tensorrt_support(onnx_path_or_model, trt_major: Optional[int] = None) -> None:
    """Raise LowformerError (one line) when TensorRT cannot take the graph; see check_onnx_for_tensorrt."""
    model, name = _load(onnx_path_or_model)
    if is_cpu_target_int8(model):
        raise LowformerError(f"{name} is an INT8 graph for --target cpu (uint8 activations, zero points != 0), "
                             "which TensorRT cannot build (it needs symmetric int8): re-export it with "
                             "`lowformer export MODEL --int8 --target tensorrt --calib-data DIR`")
    problems = check_onnx_for_tensorrt(model, trt_major)
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise LowformerError(f"{name} cannot be built with TensorRT: {'; '.join(problems[:3])}{more}")
