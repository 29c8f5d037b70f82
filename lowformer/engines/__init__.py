"""Runners for every artifact format behind one interface: `load(path) -> Runner`.

Each runtime is a backend in its own folder (`lowformer/engines/<name>/`), registered here;
`lowformer.engines.registry` answers every question about formats and runtimes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from lowformer.core.errors import LowformerError
from lowformer.artifacts import MANIFEST_NAME, ArtifactEntry, Manifest, find_manifest_for
from lowformer.engines import registry
from lowformer.engines.backend import Backend, BoundaryRunner, LoadRequest
from lowformer.engines.base import InputSpec, LayerTiming, Runner
from lowformer.engines.executorch.backend import ExecuTorchBackend
from lowformer.engines.onnxruntime.backend import OnnxRuntimeBackend
from lowformer.engines.openvino.backend import OpenVINOBackend
from lowformer.engines.pt2.backend import Pt2Backend
from lowformer.engines.pytorch.backend import PyTorchBackend
from lowformer.engines.pytorch.runner import PyTorchRunner
from lowformer.engines.tensorrt.backend import TensorRTBackend
from lowformer.engines.torchscript.backend import TorchScriptBackend
from lowformer.engines.torchscript.runner import TorchScriptRunner

__all__ = ["Backend", "BoundaryRunner", "InputSpec", "LayerTiming", "LoadRequest", "Runner", "PyTorchRunner",
           "TorchScriptRunner", "load", "load_artifacts", "resolve_artifacts", "registry", "format_of"]

for _builtin in (PyTorchBackend, TorchScriptBackend, Pt2Backend, OnnxRuntimeBackend, OpenVINOBackend,
                 TensorRTBackend, ExecuTorchBackend):
    if _builtin.name not in registry.names():
        registry.register(_builtin())

registry.load_plugins(os.environ.get(registry.PLUGINS_ENV, ""))  # backends from outside lowformer

format_of = registry.format_of


Resolved = Tuple[Path, Optional[ArtifactEntry], Optional[Manifest]]


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
        registry.format_of(p)
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
    """A runner for one artifact file; reads (and verifies) the manifest beside it.

    `runtime`: None for the format's own backend, or another registered one that can run it
    (`registry.runtimes_for`); `inference_precision`: a setting of backends that have one
    (lowformer.engines.runtimes)."""
    p = Path(path)
    if manifest is None:
        mpath = find_manifest_for(p)
        if mpath:
            manifest = Manifest.load(mpath)
            entry = manifest.entry_for(p, mpath.parent)
            if entry is not None:
                manifest.verify(mpath.parent, only=[entry.path])
    fmt = entry.format if entry and entry.format in registry.known_formats() else registry.format_of(p)
    if not p.is_file():
        raise LowformerError(f"artifact not found: {p}")
    owner = registry.owner(fmt)
    backend = registry.get(runtime) if runtime is not None else owner
    if backend.name not in registry.runtimes_for(fmt):
        raise LowformerError(f"runtime {backend.name} cannot run {p.name} ({fmt} runs on "
                             f"{', '.join(registry.runtimes_for(fmt))})")
    if inference_precision is not None and not backend.inference_precisions:
        from lowformer.engines.runtimes import is_default_precision, precision_backends

        if not is_default_precision(inference_precision):
            raise LowformerError(f"precision {inference_precision} is a setting of {precision_backends()}, not of "
                                 f"{backend.name} (run {p.name} with runtime {precision_backends(' or ')})")
        inference_precision = None
    request = LoadRequest(p, fmt, device, threads, entry, manifest, inference_precision)
    runner = backend.load(request)
    runner.format = runner.format or fmt
    if backend is not owner:
        runner.runtime = backend.name
    return runner


def load_artifacts(paths: List[str], device: str = "cpu", threads: Optional[int] = None,
                   skip_missing: bool = False, warnings: Optional[List[str]] = None,
                   runtimes: Sequence[str] = (), precisions: Sequence[str] = (), full: bool = False):
    """(path, entry, manifest, runner) for every artifact named or listed by the given manifests;
    with `runtimes`/`precisions`, one runner per combination that applies to each artifact."""
    from lowformer.engines.runtimes import check_applicable, normalize_precisions, normalize_runtimes, run_specs

    resolved = resolve_artifacts(paths, skip_missing, warnings, full)
    runtimes, precisions = normalize_runtimes(runtimes), normalize_precisions(precisions)
    formats = [e.format if e else registry.format_of(p) for p, e, _ in resolved]
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
