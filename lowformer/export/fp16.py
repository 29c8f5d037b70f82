"""Mixed-precision FP16 ONNX: FP16 weights and activations except the numerically sensitive ops.

Normalisation statistics (LayerNorm, GroupNorm/InstanceNorm and our explicit GroupNorm reductions),
softmax and other reductions stay FP32: their sums of squares overflow FP16's 65504 range after
attention, the classic FP16 failure. Inputs and outputs stay FP32. This is the graph a strongly
typed TensorRT build takes: the precision of every layer is already decided here.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List

from ..io import atomic_path
from .naming import node_in_module

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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "number truncated to 1e-07" for tiny weights
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=FP32_OPS, node_block_list=keep_nodes,
            disable_shape_infer=False)
    onnx.checker.check_model(converted)
    with atomic_path(dst) as tmp:
        onnx.save(converted, str(tmp))
    return {"fp32_ops": FP32_OPS, "fp32_modules": modules, "fp32_nodes": len(keep_nodes)
            + sum(n.op_type in FP32_OPS for n in model.graph.node)}
