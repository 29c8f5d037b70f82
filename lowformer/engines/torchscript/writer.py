"""TorchScript writer: script (trace as a fallback) -> freeze; optimize_for_inference runs at load."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List

import torch
from torch import nn

from lowformer.core.errors import LowformerError
from lowformer.core.files import atomic_path


def export_torchscript(model: nn.Module, path: Path, example: torch.Tensor) -> Dict[str, Any]:
    """Write a frozen TorchScript module. `torch.jit.optimize_for_inference` is applied when the file
    is loaded (TorchScriptRunner): torch cannot load a module again once that pass has prepacked its
    weights for MKLDNN."""
    notes: List[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = model.eval()
        try:
            scripted = torch.jit.script(model)
            method = "script"
        except Exception as e:  # timm models that do not script: trace, and say so
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            notes.append(f"torch.jit.script failed ({first}); traced instead, so shape-dependent "
                         f"control flow is fixed to the example input")
            with torch.no_grad():
                scripted = torch.jit.trace(model, example)
            method = "trace"
        frozen = torch.jit.freeze(scripted.eval())
        with atomic_path(path) as tmp:
            frozen.save(str(tmp))
            try:
                torch.jit.load(str(tmp))  # the saved file must load again
            except Exception as e:
                raise LowformerError(f"TorchScript file does not reload: {str(e).splitlines()[0]}") from None
    return {"method": method, "frozen": True, "optimize_for_inference": "applied when loaded", "notes": notes}
