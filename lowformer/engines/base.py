"""One runner interface over every backend (Polygraphy-style: runners here, comparators elsewhere)."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from lowformer.core.batching import run_in_fixed_batches
from lowformer.core.errors import LowformerError


@dataclass
class InputSpec:
    name: str = "input"
    shape: Sequence[Optional[int]] = (None, 3, 224, 224)  # None marks a dynamic axis
    dtype: str = "float32"

    @property
    def image_size(self) -> int:
        return int(self.shape[-1] or 224)

    @property
    def fixed_batch(self) -> Optional[int]:
        return self.shape[0] if isinstance(self.shape[0], int) else None

    def example(self, batch_size: int = 1, seed: int = 0) -> np.ndarray:
        b = self.fixed_batch or batch_size
        rng = np.random.default_rng(seed)
        return rng.standard_normal((b, *[int(s) for s in self.shape[1:]])).astype(np.float32)


@dataclass
class LayerTiming:
    """Time a backend attributes to one of its layers/nodes over the profiled iterations."""

    name: str
    op: str
    total_ms: float
    calls: int
    fused_from: List[str] = field(default_factory=list)  # source node names a fused layer covers
    precision: Optional[str] = None  # the precision the layer really ran in, where the runtime says (OpenVINO)


GraphNodes = Sequence[Tuple[str, Sequence[str], Sequence[str]]]  # (node name, input tensors, output tensors)


@dataclass
class LayerProfile:
    """A runner's per-layer profile, and how its layer names map to the model (`naming`):
    `modules` (eager module scopes), `code-lines` (TorchScript code lines), `graph-nodes`
    (exported-graph nodes with their nn_module_stack), `onnx-nodes` (module-scoped ONNX node
    names), `runtime-layers` (runtime layers listing the ONNX nodes fused into them and the
    precision they ran in), `fused-layers` (engine layers listing their ONNX nodes)."""

    timings: List[LayerTiming]
    naming: str
    run_ms: Optional[List[float]] = None  # each profiled run's total, where the runtime says
    graph: GraphNodes = ()  # the graph that ran (after the runtime's fusions), to place nodes it made
    warnings: List[str] = field(default_factory=list)
    source: str = ""  # how it was measured, when not by a runner of this process (trtexec files)


class Runner(abc.ABC):
    """Runs one artifact. `run` takes a numpy array or torch tensor and returns the same kind."""

    backend: str = ""
    native: str = "numpy"  # the array type `_run` works in
    format: str = ""  # the artifact format it runs (set by lowformer.engines.load when the runner does not)
    runtime: Optional[str] = None  # the runtime asked for when it is not the format's own (an ONNX via OpenVINO)
    hint: Optional[str] = None  # the runtime's inference-precision setting, where it has one
    variant: Optional[str] = None  # None: run as exported; else the key its results are recorded under
    profile_source: str = ""  # how `profile` measures (shown in profile reports)
    profile_naming: str = ""  # what its layer names are (LayerProfile.naming)

    def __init__(self, input_spec: InputSpec, precision: str = "fp32", device: str = "cpu",
                 threads: Optional[int] = None, path: Optional[str] = None):
        self.input_spec = input_spec
        self.precision = precision
        self.device = device
        self.threads = threads
        self.path = path
        self.provider = "cpu"  # what actually ran, set by subclasses
        self.warnings: List[str] = []

    @abc.abstractmethod
    def _run(self, x: Any) -> Any:
        """Logits for one batch in the runner's native array type."""

    def run(self, batch: Any) -> Any:
        fixed = self.input_spec.fixed_batch
        if fixed and len(batch) != fixed:
            return self._run_in_fixed_chunks(batch, fixed)
        as_torch = isinstance(batch, torch.Tensor)
        if self.native == "torch":
            x = batch if as_torch else torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            out = self._run(x)
            return out if as_torch else out.detach().cpu().numpy()
        x = batch.detach().cpu().numpy() if as_torch else batch
        out = self._run(np.ascontiguousarray(x, dtype=np.float32))
        return torch.from_numpy(out) if as_torch else out

    def _run_in_fixed_chunks(self, batch: Any, fixed: int) -> Any:
        """Artifacts exported with a fixed batch size: run chunks of it, padding the last one."""
        as_torch = isinstance(batch, torch.Tensor)
        x = batch.detach().cpu().numpy() if as_torch else np.asarray(batch, dtype=np.float32)
        out = run_in_fixed_batches(self.run, x, fixed)
        return torch.from_numpy(out) if as_torch else out

    def profile_layers(self, batch: np.ndarray, iterations: int = 10) -> List[LayerTiming]:
        """Per-layer times; backends that can profile override this (or `profile`)."""
        raise LowformerError(f"per-layer profiling is not available for {self.backend}")

    def profile(self, batch: Any, iterations: int = 10, warmup: int = 2) -> LayerProfile:
        """Per-layer times of `iterations` runs after `warmup`. Runners with a `profile_run` (which
        also gives each run's total and the graph that ran) are read through it."""
        run = getattr(self, "profile_run", None)
        if run is None:
            return LayerProfile(self.profile_layers(batch, iterations), self.profile_naming)
        prof = run(batch, iterations, warmup)
        return LayerProfile(prof.timings, self.profile_naming, prof.run_ms, prof.graph or (), list(prof.warnings))

    def timed_call(self, batch: np.ndarray) -> Callable[[], None]:
        """A zero-argument function doing one inference call on `batch`, finished (on the device)
        when it returns: what timing loops call. Runners that can skip host copies override it."""
        return lambda: self.run(batch)

    def describe(self) -> Dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision, "device": self.device,
                "provider": self.provider, "threads": self.threads, "path": self.path,
                "format": self.format, "fixed_batch": self.input_spec.fixed_batch, "warnings": list(self.warnings)}

    def close(self) -> None:
        pass

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
