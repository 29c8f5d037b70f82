"""A backend: what lowformer knows of one runtime, behind one small interface (Polygraphy's
loader/runner split, timm's registry).

Each runtime lives in one folder, `lowformer/engines/<name>/`, whose `backend.py` subclasses
`Backend`: which artifact formats it owns (by file suffix), which other formats it can also run,
how it loads an artifact into a `Runner`, and, where it has them, its writer (`export --to`), its
per-layer profile and its block boundaries for `validate --explain`. Everything outside `engines/`
asks the registry (`lowformer.engines.registry`), never a runtime by name.

A capability a backend does not have is refused in one line naming the backend, through the
defaults below; adding a runtime is one folder and one `registry.register(...)` call
(docs/architecture.md, "Adding a backend").
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from lowformer.artifacts import ArtifactEntry, Manifest
from lowformer.core.batching import run_in_fixed_batches_multi
from lowformer.core.errors import LowformerError
from lowformer.engines.base import InputSpec, LayerProfile, Runner

class ExportContext(Protocol):
    """What the export pipeline (lowformer.export.pipeline.Exporter) offers a backend's writer: the
    model pair, the parity inputs, the staging folder, the checked record of each artifact, and the
    shared steps other targets build on (the ONNX graph, its FP16 and Q/DQ INT8 versions, quantizers)."""

    model: Any  # the BN-fused model to write (the reference stays unfused)
    inputs: Any  # the parity batch (numpy), seeded random tensors then real images
    batch_size: Optional[int]  # a fixed batch size, or None for a dynamic batch axis
    out: Path  # the export folder (files are written to the staging folder: `path`, `staged`)
    manifest: Manifest  # the manifest being written (model, input, preprocessing)
    progress: Any  # lowformer.core.progress.Progress: long steps report through it

    def path(self, fmt: str, precision: str) -> Path: ...  # staged path of a registered artifact name
    def staged(self, name: str) -> Path: ...  # staged path of any file name
    def committed(self, fmt: str, precision: str) -> Path: ...  # the folder's path, after the commit
    def check_and_record(self, path: Path, fmt: str, precision: str, facts: Dict[str, Any]) -> ArtifactEntry: ...
    def ensure_onnx(self) -> Path: ...  # model.onnx, written and checked once
    def fp16_onnx(self) -> ArtifactEntry: ...
    def int8_onnx(self) -> ArtifactEntry: ...  # the Q/DQ INT8 ONNX, calibrated once
    def quantize_ir(self, quantizer: str, src: Path, dst: Path) -> Dict[str, Any]: ...
    def calibration_images(self) -> Tuple[np.ndarray, Any]: ...  # (preprocessed images, their ImageSet)
    def cache_file(self, kind: str, key: Dict[str, Any], suffix: str) -> Path: ...  # in the folder's calibration cache
    @property
    def weights_sha256(self) -> str: ...  # the exported weights (part of every cache key)
    def adopt(self, entry: ArtifactEntry) -> None: ...  # an entry written into the folder by the writer itself
    def next_step(self, message: str) -> None: ...  # work left for the target device (exit code 3)
    def warn(self, msg: str) -> None: ...


GraphNodes = Sequence[Tuple[str, Sequence[str], Sequence[str]]]  # (node name, input tensors, output tensors)


@dataclass(frozen=True)
class LoadRequest:
    """How to open one artifact: the file, its format and manifest records, where and how to run it."""

    path: Path
    format: str
    device: str = "cpu"
    threads: Optional[int] = None
    entry: Optional[ArtifactEntry] = None
    manifest: Optional[Manifest] = None
    inference_precision: Optional[str] = None  # a runtime setting (Backend.inference_precisions)

    @property
    def precision(self) -> str:
        """The artifact's precision as its manifest entry records it (fp32 without one)."""
        return self.entry.precision if self.entry else "fp32"

    @property
    def input_spec(self) -> InputSpec:
        """The input the manifest records (name, shape with None for a dynamic axis, dtype)."""
        if not self.manifest:
            return InputSpec()
        i = self.manifest.input
        return InputSpec(i.get("name", "input"), tuple(self.manifest.input_shape), i.get("dtype", "float32"))

    def fact(self, key: str, default: Any = None) -> Any:
        return self.entry.fact(key, default) if self.entry else default


class Backend(abc.ABC):
    """One runtime. Class attributes describe it; methods load, check, and (optionally) write,
    profile and expose block boundaries. Subclasses keep heavy imports inside methods, so the
    registry costs nothing until a backend is used."""

    name: ClassVar[str]  # the runtime's name: `--runtime`, manifest records, Runner.backend
    title: ClassVar[str] = ""  # for messages ("ONNX Runtime")
    aliases: ClassVar[Tuple[str, ...]] = ()  # other names `--runtime` takes ("ort")
    formats: ClassVar[Tuple[str, ...]] = ()  # artifact formats it owns: it is their native runtime
    suffixes: ClassVar[Dict[str, str]] = {}  # file suffix -> owned format
    runs_also: ClassVar[Tuple[str, ...]] = ()  # formats of other backends it runs when asked (--runtime)
    inference_precisions: ClassVar[Tuple[str, ...]] = ()  # settings it runs at (`--precision`), first = default
    export_targets: ClassVar[Tuple[str, ...]] = ()  # `export --to` names it writes, canonical first
    export_order: ClassVar[int] = 50  # writers run in this order (a writer may reuse an earlier one's file)
    export_needs: ClassVar[Tuple[str, ...]] = ()  # targets whose writers must run too (an IR needs the ONNX)
    export_options: ClassVar[Tuple[str, ...]] = ()  # ExportConfig fields only it takes (refused without it)
    quantizers: ClassVar[Tuple[str, ...]] = ()  # INT8 quantizers besides Q/DQ its writer takes (nncf)
    artifact_names: ClassVar[Dict[Tuple[str, str], str]] = {}  # (format, precision) -> file name it writes
    int8_targets: ClassVar[Tuple[str, ...]] = ()  # INT8 flavours (`--target`) made for this runtime
    int8_from_qdq: ClassVar[bool] = True  # its INT8 artifact is the Q/DQ ONNX or built from it (--qat-steps trains it)
    runs_on_cpu: ClassVar[bool] = True  # False: a GPU-only runtime (nothing of it is timed on this CPU)
    can_explain: ClassVar[bool] = False  # exposes block boundaries for `validate --explain` (graph, open_boundaries)

    def __repr__(self) -> str:
        return f"<backend {self.name}>"

    @property
    def label(self) -> str:
        return self.title or self.name

    # ------------------------------------------------------------------ files and running
    def companions(self, path: Path) -> List[Path]:
        """Files that belong to an artifact and go (and are removed) with it (an IR's .bin)."""
        return []

    def check_available(self) -> None:
        """Before any work: one LowformerError when the runtime cannot be used here."""

    def check_artifact(self, path: Path, entry: Optional[ArtifactEntry]) -> None:
        """Before any work: one LowformerError when the artifact's files are not as recorded."""

    @abc.abstractmethod
    def load(self, request: LoadRequest) -> Runner:
        """A runner for the artifact (heavy imports here)."""

    def normalize_precision(self, precision: str) -> str:
        """An inference-precision setting in this backend's spelling (one line if it has none)."""
        if not self.inference_precisions:
            raise LowformerError(f"precision {precision} is not a setting of {self.label}")
        return precision

    def check_precision(self, precision: str) -> None:
        """Before any work: refuse a setting this machine cannot run natively."""

    def effective_precision(self, artifact_precision: str, setting: Optional[str]) -> str:
        """The precision an artifact effectively runs at under a setting (what its gate is)."""
        return artifact_precision

    def run_key(self, request: LoadRequest) -> Optional[str]:
        """None for an artifact run as exported (its results recorded on the entry); else the key
        another runtime's or setting's results are recorded under (`<runtime>/<setting>`)."""
        native = request.format in self.formats
        setting = request.inference_precision or (self.inference_precisions[0] if self.inference_precisions else None)
        default = self.inference_precisions[0] if self.inference_precisions else None
        if native and setting == default:
            return None
        return f"{self.name}/{setting}" if setting else self.name

    # ------------------------------------------------------------------ export (optional)
    def export(self, ctx: ExportContext, request: Any) -> None:
        """Write this backend's artifacts into the export's staging folder, checking and recording
        each (`ctx.check_and_record`). `request`: the lowformer.export.config.ExportConfig."""
        raise LowformerError(f"{self.label} has no writer: it runs artifacts written by another target")

    def check_export(self, request: Any) -> None:
        """Before any work: one line when this target cannot be written with these options."""

    def after_commit(self, ctx: ExportContext, request: Any) -> None:
        """Work on the committed folder (a TensorRT engine builds from the committed ONNX)."""

    # ------------------------------------------------------------------ device profiles (optional)
    def recorded_profile(self, recording: Path, artifact: Path, entry: Optional[ArtifactEntry]) -> "LayerProfile":
        """The per-layer profile in a file recorded on the target device (an ExecuTorch ETDump) of
        `artifact`, checked to be that artifact's."""
        raise LowformerError(f"{artifact.name}: {self.label} reads no profile recorded elsewhere")

    # ------------------------------------------------------------------ explain (optional)
    def graph(self, path: Path) -> Tuple[GraphNodes, str]:
        """The artifact's named nodes (name, inputs, outputs) and its logits tensor, for the
        module-scoped names `--explain` maps to blocks. Formats without named nodes refuse."""
        raise LowformerError(self.explain_refusal(path, None) or f"{path.name}: no graph to read")

    def explain_refusal(self, path: Path, entry: Optional[ArtifactEntry]) -> Optional[str]:
        """Why `validate --explain` cannot take this artifact apart (None: it can)."""
        if self.can_explain:
            return None
        return (f"{path.name}: a {self.label} artifact does not expose its block boundaries to explain (no named "
                f"intermediate outputs to add); explain the model's ONNX instead")

    def open_boundaries(self, request: LoadRequest, boundaries: Dict[str, str]) -> "BoundaryRunner":
        """The artifact run with the tensors `boundaries` (block -> tensor of `graph`) as outputs."""
        raise LowformerError(self.explain_refusal(request.path, request.entry) or
                             f"{request.path.name}: {self.label} cannot expose block boundaries")


class BoundaryRunner(abc.ABC):
    """An artifact run with its block boundaries as extra outputs: `run(x) -> {block: array}`, and
    `original_logits(x)` from the unmodified artifact (the proof exposing changed nothing)."""

    boundaries: Dict[str, str]
    fixed_batch: Optional[int] = None

    @abc.abstractmethod
    def outputs(self, x: Any) -> List[Any]:
        """The boundary tensors, in `boundaries` order, for one batch the artifact takes."""

    @abc.abstractmethod
    def original_logits(self, x: Any) -> Any:
        """Logits of the artifact as exported (no outputs added), for the same input."""

    def run(self, x: Any) -> Dict[str, Any]:
        outs = run_in_fixed_batches_multi(self.outputs, x, self.fixed_batch)
        return {b: np.asarray(o, dtype=np.float32) for b, o in zip(self.boundaries, outs)}

    def close(self) -> None:
        pass
