"""The ONNX Runtime backend: owns the `.onnx` format."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

from lowformer.engines.backend import Backend, BoundaryRunner, ExportContext, GraphNodes, LoadRequest
from lowformer.engines.base import Runner


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    title = "ONNX Runtime"
    aliases = ("ort",)
    formats = ("onnx",)
    suffixes = {".onnx": "onnx"}
    export_targets = ("onnx",)
    int8_targets = ("cpu",)
    export_order = 30
    artifact_names = {("onnx", "fp32"): "model.onnx", ("onnx", "fp16"): "model_fp16.onnx",
                      ("onnx", "int8"): "model_int8.onnx"}
    can_explain = True

    def load(self, request: LoadRequest) -> Runner:
        from lowformer.engines.onnxruntime.runner import OnnxRuntimeRunner

        # A TensorRT-target INT8 graph (s8 activations) is checked with reference Q/DQ math on the CPU.
        exact = bool(request.entry and request.entry.int8.get("parity_needs_reference_math")) and \
            request.device == "cpu"
        return OnnxRuntimeRunner(str(request.path), request.precision, request.device, request.threads, exact=exact)

    def export(self, ctx: ExportContext, request: Any) -> None:
        """model.onnx (the graph every ONNX-based target starts from), model_fp16.onnx with `fp16`,
        the Q/DQ model_int8.onnx with `int8` (unless NNCF quantizes: it writes an IR only)."""
        ctx.ensure_onnx()
        if request.fp16:
            ctx.fp16_onnx()
        if request.int8 and request.calib.quantizer != "nncf":
            ctx.int8_onnx()

    def graph(self, path: Path) -> Tuple[GraphNodes, str]:
        from lowformer.engines.onnxruntime.boundaries import onnx_graph

        return onnx_graph(path)

    def open_boundaries(self, request: LoadRequest, boundaries: Dict[str, str]) -> BoundaryRunner:
        from lowformer.engines.onnxruntime.boundaries import OrtBoundaries

        exact = bool(request.entry and request.entry.int8.get("parity_needs_reference_math"))
        return OrtBoundaries(request.path, boundaries, request.threads, exact)
