"""Mixed-precision FP16 ONNX: FP16 weights and activations except the numerically sensitive ops.

Normalisation statistics (LayerNorm, GroupNorm/InstanceNorm and our explicit GroupNorm reductions),
softmax and other reductions stay FP32: their sums of squares overflow FP16's 65504 range after
attention, the classic FP16 failure. Inputs and outputs stay FP32. This is the graph a strongly
typed TensorRT build takes: the precision of every layer is already decided here.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Tuple

from lowformer.core.files import atomic_path
from lowformer.core.naming import node_in_module

# Ours, added to onnxconverter_common's own block list (ops without FP16 kernels, Resize's scales, ...).
FP32_OPS = ["LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax",
            "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Pow", "Sqrt"]


def convert_fp16(src: Path, dst: Path, fp32_modules: Iterable[str] = ()) -> Dict[str, Any]:
    """Write `dst`, the FP16 version of `src`; nodes of `fp32_modules` (module paths) stay FP32."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    modules = list(fp32_modules)
    keep_nodes: List[str] = [n.name for n in model.graph.node
                             if any(node_in_module(n.name, m) for m in modules)]
    # The converter retypes a Cast-to-float's output as FP16 but leaves its `to`; kept FP32 it is right.
    # (Not via op_block_list: the converter would then block the Casts it inserts itself, endlessly.)
    keep_nodes += [n.name for n in model.graph.node if n.op_type == "Cast" and n.name not in keep_nodes
                   and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in n.attribute)]
    block_ops = list(dict.fromkeys(float16.DEFAULT_OP_BLOCK_LIST + FP32_OPS))
    kept = set(keep_nodes)
    stays_fp32 = lambda n: n.op_type in block_ops or n.name in kept  # noqa: E731
    split = unshare_initializers(model, stays_fp32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "number truncated to 1e-07" for tiny weights
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=block_ops, node_block_list=keep_nodes,
            disable_shape_infer=False)
    onnx.checker.check_model(converted)
    with atomic_path(dst) as tmp:
        onnx.save(converted, str(tmp))
    return {"fp32_ops": block_ops, "fp32_modules": modules,
            "fp32_nodes": sum(stays_fp32(n) for n in model.graph.node), "split_initializers": split}


def unshare_initializers(model: Any, stays_fp32: Callable[[Any], bool]) -> int:
    """Give the FP32 nodes their own copy of every initializer they share with FP16 nodes.

    The exporter deduplicates equal constants (a zero bias of a Conv and of a LayerNorm become one
    tensor); onnxconverter_common then keeps it FP32 for both and the Conv gets mixed input types,
    which ONNX Runtime and TensorRT refuse. Returns how many initializers were split."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    uses: Dict[str, List[Tuple[Any, int]]] = defaultdict(list)
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in inits:
                uses[name].append((node, k))
    split = 0
    for name, consumers in uses.items():
        if inits[name].data_type != TensorProto.FLOAT or len({stays_fp32(n) for n, _ in consumers}) < 2:
            continue
        copy = TensorProto()
        copy.CopyFrom(inits[name])
        copy.name = f"{name}__fp32"
        model.graph.initializer.append(copy)
        for node, k in consumers:
            if stays_fp32(node):
                node.input[k] = copy.name
        split += 1
    return split
