"""With `--data`: each artifact of a model scored on images against the eager model it was made from
(`lowformer.validate`, the same random weights as the reference), once per model, before its cells.

Per format: {"images", "top1", "reference_top1", "agreement"} (top-1 in percent; agreement: the share
of images with the eager model's top-1 class), or {"error": "<one line>"}. OpenVINO's formats (an ONNX
read by another runtime) are not validated here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from lowformer.sweep.config import SweepConfig
from lowformer.sweep.formats import RUNS


def validate_artifacts(model: str, folder: Path, record: Dict[str, Any], config: SweepConfig) -> Dict[str, Any]:
    """Top-1 of each built artifact (loaded by its own runtime) and of the eager model on `config.data`,
    and their agreement: format -> {"images", "top1", "reference_top1", "agreement"} (or {"error"}); the
    eager model's own entry only beside at least one artifact (validate scores artifacts against it)."""
    from lowformer.sweep.build import write_reference
    from lowformer.validate import validate

    formats = {f: folder / a["path"] for f, a in record["artifacts"].items()
               if a.get("status") == "ok" and f in config.formats and f not in RUNS}
    if not formats:
        return {}
    reference = write_reference(model, folder)
    paths = list(dict.fromkeys(str(p) for p in formats.values()))
    result = validate(paths, config.data, reference=model, checkpoint=str(reference), limit=config.limit,
                      record=False, threads=config.threads)
    by_path = {str(a.path): a for a in result.artifacts}
    out: Dict[str, Any] = {}
    for fmt, path in formats.items():
        a = by_path.get(str(path))
        out[fmt] = ({"error": a.error} if a is not None and a.error else
                    {"images": a.images, "top1": a.top1, "reference_top1": result.reference.top1,
                     "agreement": a.agreement} if a is not None else {"error": "not scored"})
    if "eager" in config.formats:
        r = result.reference
        out["eager"] = {"images": r.images, "top1": r.top1, "reference_top1": r.top1, "agreement": 1.0}
    return out
