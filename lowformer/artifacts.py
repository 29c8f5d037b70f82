"""`manifest.json`: what an export folder holds, how it was made, and whether each artifact passed."""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from lowformer.core.errors import LowformerError
from lowformer.core.files import PathLike, write_json

MANIFEST_NAME = "manifest.json"
FORMATS = {".onnx": "onnx", ".ts": "torchscript", ".pt": "torchscript", ".engine": "tensorrt", ".plan": "tensorrt"}


def tool_versions() -> Dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("lowformer", "torch", "timm", "onnx", "onnxruntime", "onnxsim", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def new_manifest(model: Dict[str, Any], checkpoint: Dict[str, Any], input_spec: Dict[str, Any],
                 preprocessing: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "schema": 1,
        "model": model,
        "checkpoint": checkpoint,
        "input": input_spec,
        "preprocessing": preprocessing,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tools": tool_versions(),
        "artifacts": [],
    }


def manifest_path(path: PathLike) -> Path:
    p = Path(path)
    return p / MANIFEST_NAME if p.is_dir() else p


def load_manifest(path: PathLike) -> Dict[str, Any]:
    p = manifest_path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise LowformerError(f"no manifest at {p}") from None
    except (OSError, ValueError) as e:
        raise LowformerError(f"cannot read manifest {p}: {e}") from None
    if not isinstance(data, dict) or "artifacts" not in data or "model" not in data:
        raise LowformerError(f"{p} is not a lowformer manifest")
    return data


def save_manifest(folder: PathLike, manifest: Dict[str, Any]) -> Path:
    p = manifest_path(folder)
    write_json(p, manifest)
    return p


def upsert_artifact(manifest: Dict[str, Any], entry: Dict[str, Any]) -> None:
    """Add or replace (same path) one artifact entry."""
    arts: List[Dict[str, Any]] = manifest.setdefault("artifacts", [])
    arts[:] = [a for a in arts if a["path"] != entry["path"]] + [entry]


def find_manifest_for(artifact: PathLike) -> Optional[Path]:
    """The manifest beside an artifact file, if any."""
    p = Path(artifact).resolve().parent / MANIFEST_NAME
    return p if p.is_file() else None


def artifact_entry(manifest: Dict[str, Any], artifact: PathLike, folder: PathLike) -> Optional[Dict[str, Any]]:
    rel = os.path.relpath(Path(artifact).resolve(), Path(folder).resolve())
    return next((a for a in manifest.get("artifacts", []) if a["path"] == rel), None)


def format_of(path: PathLike) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise LowformerError(f"unknown artifact type {Path(path).name!r} (expected .onnx, .ts/.pt, .engine)")
    return fmt


def checkpoint_path(manifest: Dict[str, Any], folder: PathLike) -> Optional[str]:
    """Absolute path of the weights the artifacts were exported from (None: none recorded)."""
    path = (manifest.get("checkpoint") or {}).get("path")
    if not path:
        return None
    p = Path(path)
    return str(p if p.is_absolute() else Path(folder) / p)


def reference_model(manifest: Dict[str, Any], folder: PathLike):
    """The unfused PyTorch model an export folder came from (the parity reference)."""
    from lowformer.models.registry import create_model

    m = manifest["model"]
    return create_model(m["name"], checkpoint_path(manifest, folder), num_classes=int(m.get("num_classes", 1000)))
