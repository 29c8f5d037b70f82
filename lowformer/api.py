"""The public Python API: one function per command (`lowformer.export(...)`, `lowformer.validate(...)`,
...), re-exported by `lowformer`. Each imports its machinery when called.

`lowformer.export`, `.validate`, `.explain`, `.bench`, `.sweep` and `.report` are also the names of modules of
the package; those modules are callable (lowformer.core.command_module), so the name works as the
function whether or not the module was imported.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Union

if TYPE_CHECKING:
    from pathlib import Path

    from lowformer.bench.run import BenchReport
    from lowformer.engines.base import Runner
    from lowformer.explain import ExplainResult
    from lowformer.export.config import ExportConfig
    from lowformer.export.pipeline import ExportResult
    from lowformer.profiling.report import ProfileReport
    from lowformer.sweep.run import SweepReport
    from lowformer.validate import ValidationResult

__all__ = ["export", "validate", "explain", "profile", "bench", "sweep", "load", "report"]


def export(model: str, to: Union[str, Sequence[str]] = ("onnx",), config: Optional["ExportConfig"] = None,
           **fields: Any) -> "ExportResult":
    """`lowformer export`: fuse `model` (a LowFormer variant like "b1", or "timm:<name>") and write
    each target of `to` (onnx, torchscript, pt2, openvino, trt, or a registered backend's), checking
    every artifact's parity. `config` (lowformer.export.config.ExportConfig) or its fields as
    keywords: fp16, int8, calib={...}, checkpoint, image_size, batch_size, out, ...
    Returns the ExportResult: `.out`, `.artifacts` (manifest entries), `.failed`, `.exit_code`."""
    from lowformer.export.pipeline import export_model

    return export_model(model, config, to=(to,) if isinstance(to, str) else tuple(to), **fields)


def validate(artifacts: Sequence[str], data: str, **options: Any) -> "ValidationResult":
    """`lowformer validate`: top-1 of each artifact (files, export folders, manifests) and of its
    PyTorch reference on the ImageFolder `data`, with paired statistics and the accuracy gates.
    Options as lowformer.validate.validate (limit, batch_size, runtimes, precisions, record, ...)."""
    from lowformer.validate import validate as _validate

    return _validate(list(artifacts), data, **options)


def explain(artifacts: Sequence[str], data: str, **options: Any) -> "ExplainResult":
    """`lowformer validate --explain`: block by block, where each artifact diverges from its
    reference on the images `validate` uses. Options as lowformer.explain.explain."""
    from lowformer.explain import explain as _explain

    return _explain(list(artifacts), data, **options)


def profile(targets: Sequence[str], **options: Any) -> List["ProfileReport"]:
    """`lowformer profile`: per-layer latency of artifacts (or eager models), mapped to the model's
    blocks. Options as lowformer.profiling.api.profile (batch_size, iterations, runtimes, ...)."""
    from lowformer.profiling.api import profile as _profile

    return _profile(list(targets), **options)


def bench(targets: Sequence[str], **options: Any) -> "BenchReport":
    """`lowformer bench`: throughput or latency of artifacts and models, each timed in its own
    worker process. Options as lowformer.bench.run.bench (latency, batch_size, duration, ...)."""
    from lowformer.bench.run import bench as _bench

    return _bench(list(targets), **options)


def sweep(models: Sequence[str], **options: Any) -> "SweepReport":
    """`lowformer sweep`: export, (with `data`) validate and time models x formats x batch sizes as Ray
    tasks (a Ray cluster: `ray_address`; a local Ray; or this process: `use_ray=False`), one timed cell
    per node at a time, merged into `out`'s results-<isa>.json and RESULTS-<isa>.md. Options as
    lowformer.sweep.run.sweep (formats, batch_sizes, image_size, cell_seconds, labels, ...)."""
    from lowformer.sweep.run import sweep as _sweep

    return _sweep(models=tuple(models), **options)


def load(path: Union[str, "Path"], device: str = "cpu", threads: Optional[int] = None,
         runtime: Optional[str] = None, precision: Optional[str] = None) -> "Runner":
    """A runner for one artifact file (its manifest read and verified): `runner.run(batch)` takes
    and returns numpy arrays or torch tensors. `runtime`: another backend that runs the format
    (an ONNX through "openvino"); `precision`: that runtime's setting (f32 | bf16 | f16)."""
    from lowformer.engines import load as _load

    return _load(str(path), device, threads, runtime=runtime, inference_precision=precision)


def report(folders: Sequence[Union[str, "Path"]], out: Union[str, "Path"] = "report.html") -> "Path":
    """`lowformer report`: one self-contained HTML page for export folders (what each artifact is,
    its verdicts, latencies, divergence and profiles, from the manifests). Returns the page's path."""
    from lowformer.report import write_html_report

    return write_html_report(list(folders), out)
