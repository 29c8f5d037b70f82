"""The ExecuTorch backend: `.pte` programs lowered to XNNPACK (PyTorch's runtime for phones and boards),
with the ETRecord each is profiled and explained through."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from lowformer.artifacts import ArtifactEntry
from lowformer.core.errors import LowformerError
from lowformer.engines.backend import Backend, BoundaryRunner, ExportContext, GraphNodes, LoadRequest
from lowformer.engines.base import LayerProfile, Runner

NAME = "executorch"


class ExecuTorchBackend(Backend):
    name = NAME
    title = "ExecuTorch (XNNPACK)"
    aliases = ("et", "pte")
    formats = (NAME,)
    suffixes = {".pte": NAME}
    export_targets = (NAME,)
    export_order = 25
    artifact_names = {(NAME, "fp32"): "model.pte", (NAME, "int8"): "model_int8.pte"}
    can_explain = True
    int8_from_qdq = False  # PT2E quantizes the program itself (writer.py)

    def companions(self, path: Path) -> List[Path]:
        from lowformer.engines.executorch.writer import etrecord_path

        return [etrecord_path(path)] if path.suffix.lower() == ".pte" else []

    def check_available(self) -> None:
        from lowformer.engines.executorch.env import require

        require()

    def check_artifact(self, path: Path, entry: Optional[ArtifactEntry]) -> None:
        from lowformer.engines.executorch.runner import check_pte

        check_pte(path)

    def load(self, request: LoadRequest) -> Runner:
        from lowformer.engines.executorch.runner import ExecuTorchRunner

        name = request.fact("etrecord")
        etrecord = request.path.parent / name if name else None
        return ExecuTorchRunner(request.path, request.precision, request.threads, etrecord,
                                request.input_spec.name)

    def check_export(self, request: Any) -> None:
        from lowformer.engines.executorch.env import require
        from lowformer.engines.executorch.writer import check_int8_config

        require()  # before any work: ExecuTorch is an optional package
        if request.int8:
            check_int8_config(request.calib)

    def export(self, ctx: ExportContext, request: Any) -> None:
        """model.pte (FP32) and, with `int8`, model_int8.pte (PT2E INT8 calibrated on the export's
        calibration images, `exclude` kept in float), each with its ETRecord, checked like every artifact."""
        from lowformer.engines.executorch.writer import export_programs

        export_programs(ctx, request)

    def recorded_profile(self, recording: Path, artifact: Path, entry: Optional[ArtifactEntry]) -> LayerProfile:
        """An ETDump recorded on a phone or board (`executor_runner --etdump_path`) of this program,
        named through the ETRecord the export wrote beside it."""
        from lowformer.engines.executorch.etdump import read_etdump
        from lowformer.engines.executorch.runner import check_pte

        check_pte(artifact)
        name = entry.fact("etrecord") if entry else None
        etr = artifact.parent / name if name else artifact.with_suffix(".etrecord")
        return read_etdump(recording, etr if etr.is_file() else None, program=artifact,
                           precision=entry.precision if entry else None)

    def graph(self, path: Path) -> Tuple[GraphNodes, str]:
        from lowformer.engines.executorch.boundaries import program_graph

        return program_graph(path, self._etrecord(path, None))

    def open_boundaries(self, request: LoadRequest, boundaries: Dict[str, str]) -> BoundaryRunner:
        from lowformer.engines.executorch.boundaries import ExecuTorchBoundaries

        return ExecuTorchBoundaries(request.path, self._etrecord(request.path, request.entry), boundaries,
                                    request.threads)

    def explain_refusal(self, path: Path, entry: Optional[ArtifactEntry]) -> Optional[str]:
        try:
            self._etrecord(path, entry)
        except LowformerError as e:
            return str(e)
        return None

    @staticmethod
    def _etrecord(path: Path, entry: Optional[ArtifactEntry]) -> Path:
        from lowformer.engines.executorch.writer import etrecord_path

        name = entry.fact("etrecord") if entry else None
        etr = path.parent / name if name else etrecord_path(path)
        if not etr.is_file():
            raise LowformerError(f"{path.name}: no ETRecord beside it ({etr.name}): its block boundaries cannot be "
                                 "found (export it again to write one)")
        return etr
