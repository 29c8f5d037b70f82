"""`profile(...)`: per-layer time of each artifact (or eager model), mapped to LowFormer modules,
next to its end-to-end latency from a separate, un-instrumented run."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from lowformer.artifacts import ArtifactEntry, Manifest, ProfileRecord
from lowformer.engines.timing import time_runner
from lowformer.targets import Target, resolve_targets
from lowformer.core.errors import LowformerError
from lowformer.core.progress import Progress, no_progress
from lowformer.engines import Runner, registry
from lowformer.engines.base import LayerProfile
from lowformer.profiling.config import ProfileConfig
from lowformer.profiling.collect import (rows_from_fused, rows_from_graph, rows_from_lines, rows_from_modules,
                                         rows_from_nodes)
from lowformer.profiling.runtime_layers import precision_notes, rows_from_runtime_layers
from lowformer.profiling.names import GraphNeighbours
from lowformer.profiling.report import LayerRow, ProfileReport
from lowformer.profiling.structure import UNATTRIBUTED, ModelStructure, structure_of

log = logging.getLogger(__name__)

def export_reference(manifest: Manifest) -> Optional[nn.Module]:
    """The model an export folder was written from, as the export saw it (BN fused or not).

    Random weights are enough: only the module structure and the graph's op sequence matter here.
    """
    from lowformer.models.fusion import fuse
    from lowformer.models.factory import create_model

    try:
        model = create_model(manifest.model_name, None, num_classes=manifest.num_classes)
    except (LowformerError, KeyError, RuntimeError):
        return None
    if manifest.model.get("fused_batchnorms", 1):
        fuse(model)
    return model


class _References:
    """One reference model per manifest (several artifacts of a folder share it)."""

    def __init__(self, fallback: Optional[nn.Module] = None) -> None:
        self._cache: Dict[str, Tuple[Optional[nn.Module], ModelStructure]] = {}
        self._fallback = (fallback, structure_of(fallback))

    def get(self, manifest: Optional[Manifest]) -> Tuple[Optional[nn.Module], ModelStructure]:
        if not manifest:
            return self._fallback
        key = repr((manifest.model, manifest.created))
        if key not in self._cache:
            model = export_reference(manifest)
            self._cache[key] = (model, structure_of(model))
        return self._cache[key]


def _input_size(manifest: Optional[Manifest], default: int) -> Tuple[Optional[int], int]:
    if not manifest:
        return None, default
    shape = manifest.input.get("shape") or [None, 3, default, default]
    return shape[0], int(shape[-1] or default)


def _rows(prof: LayerProfile, iterations: Optional[int], structure: ModelStructure,
          line_map: Optional[Dict[str, str]]) -> List[LayerRow]:
    """The profile's layers attributed to the model's modules, by what its layer names are.
    `iterations`: the profiled runs (None: each layer's own call count, for files made elsewhere)."""
    graph = GraphNeighbours(prof.graph) if prof.graph else None
    if prof.naming == "modules":
        return rows_from_modules(prof.timings, iterations, structure)
    if prof.naming == "code-lines":
        return rows_from_lines(prof.timings, iterations, structure, line_map)
    if prof.naming == "graph-nodes":
        return rows_from_graph(prof.timings, iterations, structure)
    if prof.naming == "onnx-nodes":
        return rows_from_nodes(prof.timings, iterations, structure, graph)
    if prof.naming == "runtime-layers":
        return rows_from_runtime_layers(prof.timings, iterations, structure, graph)
    if prof.naming == "fused-layers":
        return rows_from_fused(prof.timings, structure, iterations)
    raise LowformerError(f"profile layers named {prof.naming!r}: no way to attribute them to modules")


def profile_runner(runner: Runner, *, artifact: str, label: str, structure: Optional[ModelStructure] = None,
                   line_map: Optional[Dict[str, str]] = None, line_note: Optional[str] = None,
                   config: Optional[ProfileConfig] = None, **fields: Any) -> ProfileReport:
    """Latency (un-instrumented) first, then the per-layer profile, of one runner.

    `config`: a ProfileConfig (lowformer.profiling.config; its batch_size, iterations and warmup are
    used here), or its fields as keywords. `structure`: the model's modules the layers are named
    after; `line_map` / `line_note`: code line -> module, and a note on it (TorchScript, `code_lines`)."""
    config = ProfileConfig.build(config, **fields)
    batch_size, iterations, warmup = config.batch_size, config.iterations, config.warmup
    structure = structure or ModelStructure()
    batch = runner.input_spec.example(batch_size)
    latency = time_runner(runner, batch, iterations, warmup)
    notes: List[str] = list(runner.warnings)
    prof = runner.profile(batch, iterations, warmup)
    notes += prof.warnings
    rows = _rows(prof, iterations, structure, line_map)
    if prof.naming == "code-lines" and line_note:
        notes.append(line_note)
    if prof.naming == "runtime-layers":  # the runtime said which precision each layer really ran in
        notes += precision_notes(rows, runner.precision)
    run_ms = prof.run_ms
    d = runner.describe()
    return ProfileReport(artifact=artifact, label=label, backend=runner.backend, format=runner.format,
                         precision=d.get("precision", "fp32"), device=d.get("device", "cpu"),
                         provider=d.get("provider", ""), batch_size=len(batch), iterations=iterations,
                         warmup=warmup, threads=d.get("threads"), rows=rows,
                         profiled_run_ms=sum(run_ms) / len(run_ms) if run_ms else None,
                         latency=latency.to_dict(), warnings=notes, source=runner.profile_source)


def code_lines(runner: Runner, model: Optional[nn.Module], entry: Optional[ArtifactEntry],
               batch: Optional[int], size: int) -> Tuple[Optional[Dict[str, str]], Optional[str]]:
    """(code line -> module map, note) for a runner whose layers are code lines (TorchScript), through
    its `code_line_modules`; the note says what went wrong, if anything."""
    if model is None:
        return None, f"no manifest beside {Path(runner.path or '').name} (and no model given): its code lines " \
                     "cannot be named"
    method = entry.fact("method", "script") if entry else "script"
    try:
        mapping, ratio = runner.code_line_modules(model, torch.zeros(batch or 1, 3, size, size), method)
    except Exception as e:  # naming is best effort: the times stand without it
        return None, f"could not map code lines to modules ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    note = None if ratio >= 0.99 else f"the code's op sequence matched the rebuilt model only {ratio:.0%}"
    return mapping, note


def profile(targets: Sequence[str], config: Optional[ProfileConfig] = None, model: Optional[nn.Module] = None,
            progress: Progress = no_progress, **fields: Any) -> List[ProfileReport]:
    """Profile artifacts (files, export folders, manifests) and model names (eager).

    `config`: a ProfileConfig (lowformer.profiling.config), or its fields as keywords: batch_size,
    iterations, warmup, image_size, checkpoint, record, and its RunConfig's device, threads, runtimes,
    precisions. An unknown keyword is one LowformerError.
    An artifact's layers are named after the model its manifest describes; `model` (the module
    the artifacts were exported from, BN-fused as exported) stands in for artifacts without one.
    `record`: write each artifact's per-block and per-stage times into its manifest entry
    (`facts["profile"]["<runtime>/<precision>/b<batch>"]`, see `profile_record`).
    """
    config = ProfileConfig.build(config, **fields)
    batch_size, iterations, warmup, image_size = config.batch_size, config.iterations, config.warmup, config.image_size
    if iterations < 1:
        raise LowformerError("iterations must be at least 1")
    refs = _References(model)
    reports: List[ProfileReport] = []
    resolved = resolve_targets(targets, image_size, config.checkpoint, config.run)
    with progress.task("profiling", total=len(resolved)) as task:
        for target in resolved:
            log.info("profiling %s", target.label or target.spec)
            reports.append(_profile_target(target, refs, batch_size, iterations, warmup, image_size))
            task.advance()
    if config.record:
        record_profiles(reports)
    return reports


def _model_order(key: str) -> tuple:
    """stem, stages.0.0, stages.0.1, ..., stages.10.0, head, (unattributed): numbers compared as numbers."""
    head = key.split(".", 1)[0]
    rank = {"stem": 0, "stages": 1, "head": 3, UNATTRIBUTED: 5}.get(head, 4)
    return (rank, tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split(".")))


def profile_key(report: ProfileReport) -> str:
    """`<runtime>/<precision>/b<batch>`: one profile of an artifact per runtime, precision and batch."""
    return f"{report.backend}/{report.precision or 'fp32'}/b{report.batch_size}"


def profile_record(report: ProfileReport, cpu: Optional[str] = None) -> ProfileRecord:
    """What a manifest entry keeps of one profile: the block and stage times, where and when measured
    (`cpu`: the CPU model, when the caller has it; blocks and stages in model order)."""
    import datetime as _dt

    from lowformer.core.machine import cpu_isa, cpu_model

    def groups(by: str) -> List[Dict[str, Any]]:
        rows = sorted(report.group(by), key=lambda g: _model_order(g.key))
        return [{"key": g.key, "ms": round(g.ms, 6), "share": round(g.share, 6)} for g in rows]

    return ProfileRecord(
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), backend=report.backend,
        precision=report.precision, batch=report.batch_size, device=report.device,
        isa=cpu_isa(), cpu=cpu or cpu_model(), threads=report.threads, iterations=report.iterations,
        coverage=round(report.coverage, 6), total_ms=round(report.layer_total_ms, 6),
        latency_median_ms=report.latency.get("median_ms"),
        blocks=groups("block"), stages=groups("stage"), warnings=list(report.warnings),
        gpu=torch.cuda.get_device_name(0) if report.device == "cuda" and torch.cuda.is_available() else None)


def record_profiles(reports: Sequence[ProfileReport]) -> int:
    """Write each report of an artifact with a manifest entry into that entry (one locked update per
    folder), only when the entry still records the bytes that were profiled (`report.sha256`; a file
    re-exported meanwhile is one warning line, not recorded); artifacts without a manifest beside them
    are left alone. Returns how many were recorded."""
    from lowformer import artifacts as _artifacts
    from lowformer.core.machine import cpu_model

    on_disk = [r for r in reports if r.format in registry.file_formats() and Path(r.artifact).is_file()]
    cpu = cpu_model() if on_disk else None
    return _artifacts.record_runs((_artifacts.Measurement(r.artifact, r.sha256, profile_key(r), profile_record(r, cpu))
                                   for r in on_disk), "profile")


def _profile_target(target: Target, refs: _References, batch_size: int, iterations: int, warmup: int,
                    image_size: int) -> ProfileReport:
    from lowformer.engines import resolve_artifacts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if target.kind == "model":
            with target.build_runner() as runner:
                return profile_runner(runner, artifact=target.spec, label=target.label, batch_size=batch_size,
                                      iterations=iterations, warmup=warmup,
                                      structure=structure_of(runner.module))
        (path, entry, manifest), = resolve_artifacts([target.spec])
        model, structure = refs.get(manifest)
        with target.build_runner() as runner:
            line_map, note = None, None
            if runner.profile_naming == "code-lines":  # TorchScript: its code lines named through the model
                fixed, size = _input_size(manifest, image_size)
                line_map, note = code_lines(runner, model, entry, fixed, size)
            report = profile_runner(runner, artifact=str(path), label=target.label, batch_size=batch_size,
                                    iterations=iterations, warmup=warmup, structure=structure,
                                    line_map=line_map, line_note=note)
        report.sha256 = entry.sha256 if entry else None  # the bytes measured, as verified above (and by load)
        return report


def report_from_recording(recording: str, artifact: str) -> ProfileReport:
    """A report from a profile recorded on the target device (an ExecuTorch ETDump) of `artifact` (a
    file, or its export folder when that holds one artifact of a format that reads recordings):
    named after the model its manifest describes. Nothing is run here."""
    from lowformer.engines import Backend, resolve_artifacts

    resolved = resolve_artifacts([artifact])
    readers = [(p, e, m) for p, e, m in resolved
               if type(registry.owner(e.format if e else registry.format_of(p))).recorded_profile
               is not Backend.recorded_profile]
    if len(readers) != 1:
        raise LowformerError(f"{artifact}: name the one artifact the recording was made with "
                             f"({len(readers)} here can read one)" if readers else
                             f"{artifact}: no artifact here reads a profile recorded on a device")
    (path, entry, manifest), = readers
    backend = registry.owner(entry.format if entry else registry.format_of(path))
    prof = backend.recorded_profile(Path(recording), path, entry)
    _, structure = _References().get(manifest)
    runs = max((t.calls for t in prof.timings), default=1)
    rows = _rows(prof, runs, structure, None)
    run_ms = prof.run_ms or []
    latency = {"median_ms": sorted(run_ms)[len(run_ms) // 2], "runs": len(run_ms)} if run_ms else {}
    return ProfileReport(artifact=str(path), label=f"{path.name} (recorded: {Path(recording).name})",
                         backend=backend.name, format=entry.format if entry else backend.formats[0],
                         precision=entry.precision if entry else "", device="recorded", provider=backend.name,
                         batch_size=int(entry.fact("static_batch", 1) if entry else 1),
                         iterations=runs, warmup=0, threads=None, rows=rows,
                         profiled_run_ms=sum(run_ms) / len(run_ms) if run_ms else None, latency=latency,
                         warnings=[f"per-layer times read from {Path(recording).name} (recorded on the device, not "
                                   "measured here)"] + prof.warnings, source=prof.source)


def report_from_trtexec(profile_json: Any, layer_info_json: Any = None, *, label: str = "TensorRT engine",
                        structure: Optional[ModelStructure] = None, onnx_nodes: Optional[Sequence[str]] = None,
                        latency: Optional[Dict[str, Any]] = None) -> ProfileReport:
    """A report from `trtexec --exportProfile` (and `--exportLayerInfo`) files, made on the GPU machine."""
    backend = registry.get("tensorrt")  # the engine's own profiler, read from trtexec's files
    prof = backend.profile_files(profile_json, layer_info_json, onnx_nodes)
    rows = _rows(prof, None, structure or ModelStructure(), None)
    runs = max((t.calls for t in prof.timings), default=1)
    src = str(profile_json) if isinstance(profile_json, (str, Path)) else "trtexec profile"
    return ProfileReport(artifact=src, label=label, backend=backend.name, format=backend.formats[0], precision="",
                         device="cuda", provider=backend.name, batch_size=0, iterations=runs, warmup=0,
                         threads=None, rows=rows, profiled_run_ms=None, latency=latency or {},
                         warnings=["per-layer times read from trtexec files (not measured here)"] + prof.warnings,
                         source=prof.source)
