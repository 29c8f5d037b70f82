"""The TensorRT backend: engines (`.engine`/`.plan`) built from an ONNX on the target GPU."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lowformer.artifacts import ArtifactEntry
from lowformer.core.errors import LowformerError, NeedsTargetDevice
from lowformer.engines.backend import Backend, ExportContext, LoadRequest
from lowformer.engines.base import LayerProfile, Runner


class TensorRTBackend(Backend):
    name = "tensorrt"
    title = "TensorRT"
    aliases = ("trt",)
    formats = ("tensorrt",)
    suffixes = {".engine": "tensorrt", ".plan": "tensorrt"}
    export_targets = ("trt", "tensorrt")
    int8_targets = ("tensorrt",)
    runs_on_cpu = False
    export_order = 90  # built from the committed ONNX, after every other target
    export_needs = ("onnx",)  # the engine is built from model.onnx / model_fp16.onnx / model_int8.onnx
    # ExportConfig.trt_build: build settings with defaults (ignored when no engine is asked for)

    def load(self, request: LoadRequest) -> Runner:
        from lowformer.engines.tensorrt.runner import TensorRTRunner

        return TensorRTRunner.from_file(str(request.path), device=request.device,
                                        entry=request.entry.to_dict() if request.entry else None)

    def explain_refusal(self, path: Path, entry: Optional[ArtifactEntry]) -> Optional[str]:
        from lowformer.engines.tensorrt.environment import tensorrt_status

        src = ((entry.facts.get("source") or {}).get("path") if entry else None) or "the ONNX it was built from"
        ok, reason = tensorrt_status()
        if not ok:
            return (f"{path.name}: explain needs a GPU with TensorRT to run a TensorRT engine ({reason}); explain "
                    f"{src} instead (its block boundaries are ONNX tensors)")
        return (f"{path.name}: a TensorRT engine does not expose its block boundaries (its layers are fused when "
                f"it is built); explain {src} instead")

    def check_export(self, request: Any) -> None:
        if request.fp16 and request.int8:
            raise LowformerError("a TensorRT export builds one engine: choose one of FP16 and INT8")
        if request.int8 and request.calib.target == "cpu":
            raise LowformerError("a TensorRT INT8 engine needs the tensorrt INT8 target (int8_target): a cpu-target "
                                 "graph (u8 activations, non-zero zero points) cannot build")

    def export(self, ctx: ExportContext, request: Any) -> None:
        pass  # the engine is built after the commit, from the committed ONNX (`after_commit`)

    def after_commit(self, ctx: ExportContext, request: Any) -> None:
        """Build the engine on this machine's GPU; without one, the command to run on the target
        device becomes the export's next step (exit code 3)."""
        from lowformer.engines.tensorrt import build_engine, require_tensorrt_support

        precision = "fp16" if request.fp16 else "int8" if request.int8 else "fp32"
        onnx_path = ctx.committed("onnx", precision)
        require_tensorrt_support(onnx_path)  # one line (exit 1) before the exit-3 device step
        try:
            entry = build_engine(str(onnx_path), str(onnx_path.with_suffix(".engine")),
                                 fp16=precision == "fp16", int8=precision == "int8",
                                 manifest_folder=str(ctx.out), **request.trt_build)
            ctx.adopt(ArtifactEntry.from_dict(entry))  # build_engine recorded it in the folder already
        except NeedsTargetDevice as e:
            ctx.next_step(str(e))

    def build(self, onnx_path: str, precision: str = "fp32", **settings: Any) -> ArtifactEntry:
        """An engine built from an ONNX beside its manifest (`lowformer build-engine`); without a GPU
        with TensorRT, NeedsTargetDevice carrying the command to run on the target device."""
        from lowformer.engines.tensorrt import build_engine

        return ArtifactEntry.from_dict(build_engine(onnx_path, fp16=precision == "fp16", int8=precision == "int8",
                                                    **settings))

    def profile_files(self, profile_json: Any, layer_info_json: Any = None,
                      onnx_nodes: Optional[Any] = None) -> LayerProfile:
        """The per-layer profile in `trtexec --exportProfile` (and `--exportLayerInfo`) files, made on
        the GPU machine: engine layers with the ONNX nodes fused into them."""
        from lowformer.engines.tensorrt.runner import TensorRTRunner
        from lowformer.engines.tensorrt.trtexec import layer_timings

        return LayerProfile(layer_timings(profile_json, layer_info_json, onnx_nodes), TensorRTRunner.profile_naming,
                            source=TensorRTRunner.profile_source)
