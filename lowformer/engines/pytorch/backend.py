"""The eager PyTorch backend: no artifact files (model names run eager in `bench` and `profile`)."""
from __future__ import annotations

from lowformer.core.errors import LowformerError
from lowformer.engines.backend import Backend, LoadRequest
from lowformer.engines.base import Runner


class PyTorchBackend(Backend):
    name = "pytorch"
    title = "PyTorch eager"
    # no artifact format: eager models are built from a model name (runner format "eager")

    def load(self, request: LoadRequest) -> Runner:
        raise LowformerError(f"{request.path.name}: eager models are built from a model name, not loaded from a file")
