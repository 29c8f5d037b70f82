"""The TorchScript backend: `.ts`/`.pt` modules, run by torch.jit."""
from __future__ import annotations

from typing import Any

from lowformer.engines.backend import Backend, ExportContext, LoadRequest
from lowformer.engines.base import Runner


class TorchScriptBackend(Backend):
    name = "torchscript"
    title = "TorchScript"
    formats = ("torchscript",)
    suffixes = {".ts": "torchscript", ".pt": "torchscript"}
    export_targets = ("torchscript",)
    export_order = 10
    artifact_names = {("torchscript", "fp32"): "model.ts"}

    def load(self, request: LoadRequest) -> Runner:
        from lowformer.engines.torchscript.runner import TorchScriptRunner

        return TorchScriptRunner.from_file(str(request.path), request.input_spec, request.device, request.threads)

    def export(self, ctx: ExportContext, request: Any) -> None:
        import torch

        from lowformer.engines.torchscript.writer import export_torchscript

        path = ctx.path("torchscript", "fp32")
        example = torch.from_numpy(ctx.inputs[: ctx.batch_size or 1])
        facts = export_torchscript(ctx.model, path, example)
        for note in facts["notes"]:
            ctx.warn(note)
        ctx.check_and_record(path, "torchscript", "fp32", facts)
