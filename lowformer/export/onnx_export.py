"""ONNX writer: opset >= 17, input `input`, output `logits`, checked, shape-inferred, simplified."""
from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from lowformer.core.errors import LowformerError
from lowformer.core.files import atomic_path
from lowformer.export.prepare import for_onnx

INPUT_NAME, OUTPUT_NAME = "input", "logits"
MIN_OPSET = 17  # native LayerNormalization


def _torch_export(model: nn.Module, example: torch.Tensor, opset: int, dynamic: bool) -> bytes:
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter names nodes after their module scope, which per-layer
        # profiling maps back to LowFormer blocks.
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                          do_constant_folding=True)
    return buf.getvalue()


def simplify(model_proto) -> tuple:
    """onnxsim; on failure keep the unsimplified graph and say why."""
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model_proto)
        if ok:
            return simplified, None
        return model_proto, "onnxsim could not validate the simplified model; kept the unsimplified one"
    except Exception as e:  # onnxsim raises on unsupported graphs
        return model_proto, f"onnxsim failed ({str(e).splitlines()[0] if str(e) else type(e).__name__}); kept the unsimplified model"


def op_counts(model_proto) -> Dict[str, int]:
    return dict(Counter(n.op_type for n in model_proto.graph.node))


def export_onnx(model: nn.Module, path: Path, image_size: int = 224, batch_size: Optional[int] = None,
                opset: int = MIN_OPSET, do_simplify: bool = True) -> Dict[str, Any]:
    import onnx

    if opset < MIN_OPSET:
        raise LowformerError(f"--opset {opset} is too old: LowFormer needs opset >= {MIN_OPSET} (LayerNormalization)")
    notes: List[str] = []
    example = torch.zeros(batch_size or 1, 3, image_size, image_size)
    try:
        raw = _torch_export(for_onnx(model), example, opset, dynamic=batch_size is None)
    except Exception as e:
        raise LowformerError(f"ONNX export failed: {str(e).strip().splitlines()[0]}") from None
    proto = onnx.load_from_string(raw)
    simplified = False
    if do_simplify:
        proto, why = simplify(proto)
        simplified = why is None
        if why:
            notes.append(why)
    onnx.checker.check_model(proto, full_check=True)
    proto = onnx.shape_inference.infer_shapes(proto)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    ops = op_counts(proto)
    return {"opset": opset, "simplified": simplified, "nodes": sum(ops.values()), "ops": ops,
            "dynamic_batch": batch_size is None, "notes": notes}
