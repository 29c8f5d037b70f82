"""The pt2 backend: torch.export programs ("pt2") and AOTInductor packages ("aoti"), both `.pt2`."""
from __future__ import annotations

from typing import Any

from lowformer.engines.backend import Backend, ExportContext, LoadRequest
from lowformer.engines.base import Runner


class Pt2Backend(Backend):
    name = "pt2"
    title = "torch.export / AOTInductor"
    formats = ("pt2", "aoti")
    suffixes = {".pt2": "pt2"}  # which of the two a file is: its entry's format, else the archive
    export_targets = ("pt2",)
    export_order = 20
    artifact_names = {("pt2", "fp32"): "model.pt2"}  # + model_aoti_<device>.pt2 (writer.AOTI_NAMES)

    def load(self, request: LoadRequest) -> Runner:
        from lowformer.engines.pt2.runner import load_pt2

        entry = request.entry
        return load_pt2(str(request.path), request.input_spec, request.device, request.threads,
                        entry.format if entry else None, entry.facts if entry else None)

    def check_export(self, request: Any) -> None:
        from lowformer.engines.pt2.writer import find_cpp_compiler

        find_cpp_compiler()  # before any work: the AOTInductor package needs a C++ compiler

    def export(self, ctx: ExportContext, request: Any) -> None:
        """model.pt2 (torch.export, dynamic batch unless a batch size is fixed) and its AOTInductor
        package model_aoti_cpu.pt2 (and model_aoti_cuda.pt2 with a GPU), each checked like every artifact."""
        import torch

        from lowformer.engines.pt2.writer import AOTI_NAMES, aoti_devices, compile_aoti, export_program, save_program

        dynamic = ctx.batch_size is None
        example = torch.from_numpy(ctx.inputs[: ctx.batch_size or 2])
        program, facts = export_program(ctx.model, example, dynamic)
        path = ctx.path("pt2", "fp32")
        facts.update(save_program(program, path))
        ctx.check_and_record(path, "pt2", "fp32", facts)
        for device in aoti_devices():
            package = ctx.staged(AOTI_NAMES[device])
            ctx.check_and_record(package, "aoti", "fp32", compile_aoti(program, package, device, dynamic, path.name))
