"""Runners for every artifact format behind one interface: `load(path) -> Runner`."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from lowformer.core.errors import LowformerError
from lowformer.artifacts import MANIFEST_NAME, ArtifactEntry, Manifest, find_manifest_for, format_of
from lowformer.engines.base import InputSpec, LayerTiming, Runner
from lowformer.engines.torch_runners import PyTorchRunner, TorchScriptRunner

__all__ = ["InputSpec", "LayerTiming", "Runner", "PyTorchRunner", "TorchScriptRunner", "load",
           "load_artifacts", "resolve_artifacts"]


Resolved = Tuple[Path, Optional[ArtifactEntry], Optional[Manifest]]


def _input_spec_from_manifest(manifest: Optional[Manifest]) -> InputSpec:
    if not manifest:
        return InputSpec()
    i = manifest.input
    return InputSpec(i.get("name", "input"), tuple(manifest.input_shape), i.get("dtype", "float32"))


def resolve_artifacts(paths: List[str], skip_missing: bool = False,
                      warnings: Optional[List[str]] = None, full: bool = False) -> List[Resolved]:
    """Expand artifact files, manifests and export folders into (artifact, entry, manifest).

    Every manifest read is verified (paths inside the folder, files present with their recorded
    size and sha256; `full`: re-hashed, `.verified.json` not trusted): a mismatch is one
    LowformerError; missing files are skipped, with a line in `warnings`, only when `skip_missing`.
    """
    out = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise LowformerError(f"no such artifact or manifest: {raw}")
        if p.is_dir() or p.name == MANIFEST_NAME or p.suffix == ".json":
            manifest = Manifest.load(p)
            folder = p if p.is_dir() else p.parent
            notes = manifest.verify(folder, skip_missing, full=full)
            if warnings is not None:
                warnings.extend(notes)
            out += [(folder / e.path, e, manifest) for e in manifest.artifacts]
            continue
        format_of(p)
        mpath = find_manifest_for(p)
        manifest = Manifest.load(mpath) if mpath else None
        entry = manifest.entry_for(p, mpath.parent) if manifest else None
        if entry is not None:
            manifest.verify(mpath.parent, only=[entry.path], full=full)
        out.append((p, entry, manifest))
    if not out:
        raise LowformerError("no runnable artifacts in " + ", ".join(paths))
    return _once_each(out, warnings)


def _once_each(resolved: List[Resolved], warnings: Optional[List[str]]) -> List[Resolved]:
    """Each artifact file once: a manifest listing an entry twice, or a file named twice (the folder and
    the file), is run once, with one warning per file."""
    seen: Dict[Path, int] = {}
    out = []
    for item in resolved:
        key = item[0].resolve()
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 1:
            out.append(item)
    for key, n in seen.items():
        if n > 1 and warnings is not None:
            warnings.append(f"{key.name} is listed {'twice' if n == 2 else f'{n} times'} (duplicate manifest "
                            f"entry or argument): taken once")
    return out


def load(path: str, device: str = "cpu", threads: Optional[int] = None,
         entry: Optional[ArtifactEntry] = None, manifest: Optional[Manifest] = None,
         runtime: Optional[str] = None, inference_precision: Optional[str] = None) -> Runner:
    """A runner for one artifact file (.onnx, .xml, .ts/.pt, .engine); reads the manifest beside it.

    `runtime`: None for the format's native one, or `openvino` for an ONNX; `inference_precision`
    (f32 | bf16 | f16) is a setting of OpenVINO runners (lowformer.engines.runtimes)."""
    p = Path(path)
    if manifest is None:
        mpath = find_manifest_for(p)
        if mpath:
            manifest = Manifest.load(mpath)
            entry = manifest.entry_for(p, mpath.parent)
            if entry is not None:
                manifest.verify(mpath.parent, only=[entry.path])
    fmt = format_of(p)
    precision = entry.precision if entry else "fp32"
    if not p.is_file():
        raise LowformerError(f"artifact not found: {p}")
    from lowformer.engines.runtimes import SUPPORTED, runtime_for

    chosen = runtime_for(fmt, runtime)
    if runtime is not None and runtime not in SUPPORTED.get(fmt, ()):
        raise LowformerError(f"runtime {runtime} cannot run {p.name} ({fmt} runs on "
                             f"{', '.join(SUPPORTED.get(fmt, (chosen,)))})")
    if chosen == "openvino":
        from lowformer.engines.openvino import OpenVINORunner

        return OpenVINORunner(str(p), precision, device, threads, inference_precision,
                              weights=entry.fact("weights") if entry else None)
    if inference_precision is not None:
        from lowformer.engines.openvino import normalize_precision

        if normalize_precision(inference_precision) != "f32":
            raise LowformerError(f"precision {inference_precision} is a setting of the OpenVINO runtime, not of "
                                 f"{chosen} (run {p.name} with runtime openvino)")
    if fmt == "onnx":
        from lowformer.engines.onnxrt import OnnxRuntimeRunner

        # A TensorRT-target INT8 graph (s8 activations) is checked with reference Q/DQ math on the CPU.
        exact = bool(entry and entry.int8.get("parity_needs_reference_math")) and device == "cpu"
        return OnnxRuntimeRunner(str(p), precision, device, threads, exact=exact)
    if fmt == "torchscript":
        return TorchScriptRunner.from_file(str(p), _input_spec_from_manifest(manifest), device, threads)
    if fmt == "pt2":  # a torch.export program or an AOTInductor package: the entry says, else the archive
        from lowformer.engines.pt2 import load_pt2

        return load_pt2(str(p), _input_spec_from_manifest(manifest), device, threads,
                        entry.format if entry else None, entry.facts if entry else None)
    from lowformer.engines.tensorrt import TensorRTRunner

    return TensorRTRunner.from_file(str(p), device=device, entry=entry.to_dict() if entry else None)


def load_artifacts(paths: List[str], device: str = "cpu", threads: Optional[int] = None,
                   skip_missing: bool = False, warnings: Optional[List[str]] = None,
                   runtimes: Sequence[str] = (), precisions: Sequence[str] = (), full: bool = False):
    """(path, entry, manifest, runner) for every artifact named or listed by the given manifests;
    with `runtimes`/`precisions`, one runner per combination that applies to each artifact."""
    from lowformer.engines.runtimes import check_applicable, normalize_precisions, normalize_runtimes, run_specs

    resolved = resolve_artifacts(paths, skip_missing, warnings, full)
    runtimes, precisions = normalize_runtimes(runtimes), normalize_precisions(precisions)
    formats = [e.format if e else format_of(p) for p, e, _ in resolved]
    check_applicable(formats, runtimes, precisions)
    out = []
    try:
        for (p, e, m), fmt in zip(resolved, formats):
            for s in run_specs(fmt, runtimes, precisions):
                out.append((p, e, m, load(str(p), device, threads, e, m, s.runtime, s.precision)))
    except BaseException:
        for *_, r in out:
            r.close()
        raise
    return out
