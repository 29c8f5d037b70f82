"""The OpenVINO backend: owns the IR format (`.xml` with its `.bin`), runs ONNX too, at an
inference precision (f32 | bf16 | f16)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from lowformer.artifacts import ArtifactEntry
from lowformer.engines.backend import Backend, BoundaryRunner, ExportContext, GraphNodes, LoadRequest
from lowformer.engines.base import Runner


class OpenVINOBackend(Backend):
    name = "openvino"
    title = "OpenVINO"
    aliases = ("ov",)
    formats = ("openvino",)
    suffixes = {".xml": "openvino"}
    runs_also = ("onnx",)
    inference_precisions = ("f32", "bf16", "f16")
    export_targets = ("openvino",)
    int8_targets = ("openvino",)
    export_order = 40
    export_needs = ("onnx",)  # IRs are converted from the export's ONNX (and its Q/DQ INT8 ONNX)
    export_options = ("keep_f32",)
    quantizers = ("nncf",)  # besides Q/DQ: NNCF quantizes the IR itself
    artifact_names = {("openvino", "fp32"): "model.xml", ("openvino", "fp16"): "model_fp16.xml",
                      ("openvino", "int8"): "model_int8.xml"}
    can_explain = True

    def companions(self, path: Path) -> List[Path]:
        from lowformer.engines.openvino.runner import weights_path

        return [weights_path(path)] if path.suffix.lower() == ".xml" else []

    def check_available(self) -> None:
        from lowformer.engines.openvino.runner import openvino_module

        openvino_module()

    def check_artifact(self, path: Path, entry: Optional[ArtifactEntry]) -> None:
        if path.suffix.lower() == ".xml":  # the IR's .bin present (and as recorded)
            from lowformer.engines.openvino.runner import check_ir

            check_ir(path, entry.fact("weights") if entry else None)

    def load(self, request: LoadRequest) -> Runner:
        from lowformer.engines.openvino.runner import OpenVINORunner

        return OpenVINORunner(str(request.path), request.precision, request.device, request.threads,
                              request.inference_precision, weights=request.fact("weights"))

    def normalize_precision(self, precision: str) -> str:
        from lowformer.engines.openvino.runner import normalize_precision

        return normalize_precision(precision)

    def check_precision(self, precision: str) -> None:
        from lowformer.engines.openvino.runner import check_precision

        check_precision(precision)

    def effective_precision(self, artifact_precision: str, setting: Optional[str]) -> str:
        from lowformer.engines.openvino.runner import effective_precision

        return effective_precision(artifact_precision, setting or "f32")

    def check_export(self, request: Any) -> None:
        from lowformer.engines.openvino.runner import openvino_module

        openvino_module()  # before any work: OpenVINO is an optional package

    def export(self, ctx: ExportContext, request: Any) -> None:
        """model.xml (FP32 IR) and model_fp16.xml (FP16-compressed weights) from model.onnx, the
        `keep_f32` blocks marked to stay f32 under a bf16/f16 hint (none by default); with `int8`,
        model_int8.xml: NNCF's (quantizer nncf) or the Q/DQ ONNX converted (quantizer qdq)."""
        from lowformer.engines.openvino.writer import convert_onnx, keep_f32_blocks

        src = ctx.ensure_onnx()
        keep = keep_f32_blocks(request.keep_f32)
        for precision, compress in (("fp32", False), ("fp16", True)):
            path = ctx.path("openvino", precision)
            ctx.check_and_record(path, "openvino", precision, convert_onnx(src, path, compress, keep))
        if request.int8:
            path = ctx.path("openvino", "int8")
            if request.calib.quantizer == "nncf":
                facts = ctx.quantize_ir("nncf", src, path)
            else:
                made = ctx.int8_onnx()
                qdq = ctx.path("onnx", "int8")
                facts = {**convert_onnx(qdq, path), "int8": {**made.int8, "quantizer": "qdq", "source": qdq.name},
                         "calibration": made.calibration}
            ctx.check_and_record(path, "openvino", "int8", facts)

    def graph(self, path: Path) -> Tuple[GraphNodes, str]:
        from lowformer.engines.openvino.boundaries import ir_graph

        return ir_graph(path)

    def open_boundaries(self, request: LoadRequest, boundaries: Dict[str, str]) -> BoundaryRunner:
        from lowformer.engines.openvino.boundaries import OpenVINOBoundaries

        return OpenVINOBoundaries(request.path, boundaries, request.threads, request.inference_precision or "f32",
                                  weights=request.fact("weights"))
