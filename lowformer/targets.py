"""What `bench` and `profile` measure: model names and artifacts turned into rebuildable targets."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from lowformer.artifacts import ArtifactEntry
from lowformer.core.errors import LowformerError
from lowformer.engines import InputSpec, PyTorchRunner, Runner, load, registry, resolve_artifacts
from lowformer.engines.config import RunConfig


@dataclass
class Target:
    """What to benchmark, in a form a spawned process can rebuild its own runner from."""

    spec: str  # model name, or artifact path
    kind: str  # "model" | "artifact"
    image_size: int = 224
    checkpoint: Optional[str] = None
    device: str = "cpu"
    threads: Optional[int] = None
    label: str = ""
    model: Optional[str] = None  # registry name, when known (for MACs)
    runtime: Optional[str] = None  # None: the format's own; else another runtime that runs it (--runtime)
    precision: Optional[str] = None  # the runtime's inference-precision setting (f32 | bf16 | f16); None: default
    format: str = ""  # the artifact's format (for checking --runtime / --precision)
    sha256: Optional[str] = None  # its manifest entry's digest as verified when resolved: what its timing is recorded against

    def build_runner(self) -> Runner:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            return self._build_runner()

    def _build_runner(self) -> Runner:
        if self.kind == "model":
            from lowformer.models.factory import create_model

            model = create_model(self.spec, self.checkpoint)
            return PyTorchRunner(model, InputSpec(shape=(None, 3, self.image_size, self.image_size)),
                                 device=self.device, threads=self.threads)
        runner = load(self.spec, self.device, self.threads, runtime=self.runtime, inference_precision=self.precision)
        runner.precision = precision_of(Path(self.spec), None) if runner.precision == "fp32" else runner.precision
        return runner


def precision_of(path: Path, entry: Optional[ArtifactEntry]) -> str:
    """The manifest's precision; without a manifest, the export's file naming (model_fp16.onnx)."""
    if entry and entry.precision:
        return entry.precision
    stem = path.stem.lower()
    return next((p for p in ("fp16", "int8") if stem.endswith(p) or f"_{p}" in stem), "fp32")


def _artifact_targets(raw: str, device: str, threads: Optional[int], runtimes: Sequence[str] = (),
                      precisions: Sequence[str] = ()) -> List[Target]:
    from lowformer.engines.runtimes import run_specs, runtime_for

    out = []
    for path, entry, manifest in resolve_artifacts([raw]):
        size = int(manifest.input_shape[-1] or 224) if manifest else 224
        fmt = entry.format if entry else registry.format_of(path)
        registry.owner(fmt).check_artifact(path, entry)  # before any work: its files present, as recorded
        for run in run_specs(fmt, runtimes, precisions):
            shown = [x for x in (run.runtime if run.runtime != runtime_for(fmt, None) else None, run.precision) if x]
            how = f", {' '.join(shown)}" if shown else ""
            label = f"{path.name} ({fmt} {precision_of(path, entry)}{how})"
            if manifest:
                label = f"{manifest.display_name} {label}"
            out.append(Target(str(path), "artifact", size, None, device, threads, label,
                              manifest.model_name if manifest else None, run.runtime, run.precision, fmt,
                              entry.sha256 if entry else None))
    return out


def export_optit(model: str, image_size: int, checkpoint: Optional[str], folder: Path) -> Path:
    """The paper's --optit: BN-fused, scripted, frozen TorchScript (optimize_for_inference runs at load),
    written by the `torchscript` target through the export pipeline (so its parity is checked too)."""
    from lowformer.export.pipeline import export_model

    result = export_model(model, to=("torchscript",), checkpoint=checkpoint, image_size=image_size,
                          out=str(folder / f"{model.replace(':', '_')}-{image_size}"))
    if result.failed:
        raise LowformerError(f"--optit: the TorchScript of {model} failed its parity check ({result.failed[0]})")
    return result.out / result.artifacts[0].path


def resolve_targets(args: Sequence[str], image_size: int = 224, checkpoint: Optional[str] = None,
                    run: Optional[RunConfig] = None, *, optit: bool = False, workdir: Optional[Path] = None,
                    **fields: Any) -> List[Target]:
    """Artifacts (files, folders, manifests) and model names (`b1`, `timm:resnet50`) to targets.

    `image_size` and `checkpoint`: of the model names; `run`: a RunConfig (lowformer.engines.config),
    or its fields as keywords: `device`, `threads`, and `runtimes` / `precisions`: each artifact once
    per runtime and OpenVINO precision that applies to it (lowformer.engines.runtimes); model names run
    eager whatever they say. `optit`: model names as BN-fused TorchScript, exported into `workdir`."""
    from lowformer.engines.runtimes import check_applicable, normalize_precisions, normalize_runtimes, runtime_for
    from lowformer.models.registry import resolve

    run = RunConfig.build(run, **fields)
    device, threads = run.device, run.threads
    runtimes, precisions = normalize_runtimes(run.runtimes), normalize_precisions(run.precisions)
    out: List[Target] = []
    for raw in args:
        if os.path.exists(raw):
            out.extend(_artifact_targets(raw, device, threads, runtimes, precisions))
            continue
        if raw.endswith((*registry.suffixes(), ".json")) or os.sep in raw:
            raise LowformerError(f"no such artifact or manifest: {raw}")
        spec = resolve(raw)
        if optit:
            if workdir is None:
                raise LowformerError("optit needs a work folder")
            path = export_optit(spec.name, image_size, checkpoint, workdir)
            out.append(Target(str(path), "artifact", image_size, None, device, threads,
                              f"{spec.display} TorchScript (optit)", spec.name, format=registry.format_of(path)))
        else:
            out.append(Target(spec.name, "model", image_size, checkpoint, device, threads,
                              f"{spec.display} eager", spec.name))
    if not out:
        raise LowformerError("nothing to benchmark")
    if runtimes or precisions:
        check_applicable([t.format for t in out if t.kind == "artifact" and t.format], runtimes, precisions)
    for name in dict.fromkeys(runtime_for(t.format, t.runtime) for t in out if t.kind == "artifact"):
        registry.get(name).check_available()  # before any work: one line when a runtime is not installed
    return out
