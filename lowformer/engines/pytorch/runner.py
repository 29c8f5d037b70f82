"""PyTorch eager runner, and the torch.profiler plumbing the torch-based runners share."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from lowformer.core.errors import LowformerError
from lowformer.core.native_output import drop_native_lines
from lowformer.engines.base import InputSpec, LayerTiming, Runner

SCOPE_PREFIX = "lowformer.module:"  # record_function scopes around eager modules
RUN_SCOPE = "lowformer.run"
@dataclass
class TorchProfile:
    """Per-layer times (execution order; total over the profiled runs) and each run's total."""

    timings: List[LayerTiming]
    run_ms: List[float]
    warnings: List[str] = field(default_factory=list)
    graph: list = field(default_factory=list)


def _activities(device: torch.device):
    from torch.profiler import ProfilerActivity

    acts = [ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    return acts


def _span(e) -> Tuple[float, float]:
    return e.time_range.start, e.time_range.end


def _device_us(e) -> float:
    """Device time of an event and everything under it (0 on the CPU)."""
    return float(getattr(e, "device_time_total", 0.0) or 0.0)


def _torch_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise LowformerError("--device cuda asked for, but torch sees no CUDA GPU on this machine")
    return torch.device("cuda" if device == "cuda" else "cpu")


def run_on_device(module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Float CPU logits of `module` on `x`, computed on `device` (synchronised, so timings are whole)."""
    with torch.inference_mode():
        out = module(x.to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out.float().cpu()


class _TorchModuleRunner(Runner):
    native = "torch"

    def __init__(self, module: nn.Module, input_spec: InputSpec, precision: str = "fp32",
                 device: str = "cpu", threads: Optional[int] = None, path: Optional[str] = None):
        super().__init__(input_spec, precision, device, threads, path)
        if threads:
            torch.set_num_threads(threads)
        self._device = _torch_device(device)
        self.module = module.to(self._device).eval()
        self.provider = self._device.type

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return run_on_device(self.module, x, self._device)

    def timed_call(self, batch: np.ndarray):
        """The input placed on the device once (no host copies timed), a CUDA synchronise after each call."""
        fixed = self.input_spec.fixed_batch
        if fixed and fixed != len(batch):
            return super().timed_call(batch)
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(self._device)
        sync = torch.cuda.synchronize if self._device.type == "cuda" else (lambda: None)
        module = self.module

        def run_torch() -> None:
            with torch.inference_mode():
                module(x)
            sync()
        return run_torch


    def _as_input(self, batch) -> torch.Tensor:
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        return x.to(self._device)

    def _profiled(self, batch, iterations: int, warmup: int, **kwargs):
        """torch.profiler over `iterations` calls, each inside a `lowformer.run` scope."""
        import os

        from torch.profiler import profile, record_function

        if self._device.type == "cpu":  # Kineto otherwise logs "gpuGetDeviceCount failed" as an ERROR
            os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        x = self._as_input(batch)
        with torch.inference_mode():
            for _ in range(max(warmup, 0)):
                self.module(x)
            with drop_native_lines(), profile(activities=_activities(self._device), **kwargs) as prof:
                for _ in range(max(iterations, 1)):
                    with record_function(RUN_SCOPE):
                        self.module(x)
                    if self._device.type == "cuda":
                        torch.cuda.synchronize()
        events = prof.events()
        runs = sorted((e for e in events if e.name == RUN_SCOPE), key=lambda e: e.time_range.start)
        return events, runs


class PyTorchRunner(_TorchModuleRunner):
    """An eager nn.Module (the reference every artifact is compared against)."""

    backend = "pytorch"
    format = "eager"
    profile_naming = "modules"
    profile_source = "torch.profiler, one record_function scope per module call (exclusive times)"

    def profile_run(self, batch, iterations: int = 10, warmup: int = 2) -> TorchProfile:
        """Exclusive time of every module (its own ops, not its children's), from torch.profiler
        scopes that forward hooks open and close around each module call. On CUDA the time is the
        device time of the kernels launched in the scope."""
        from torch.profiler import record_function

        stack: List[object] = []

        def enter(name):
            def hook(_m, _args):
                rf = record_function(SCOPE_PREFIX + name)
                rf.__enter__()
                stack.append(rf)
            return hook

        def leave(_m, _args, _out):
            if stack:
                stack.pop().__exit__(None, None, None)

        handles = []
        for name, mod in self.module.named_modules():
            handles.append(mod.register_forward_pre_hook(enter(name)))
            handles.append(mod.register_forward_hook(leave))
        try:
            events, runs = self._profiled(batch, iterations, warmup)
        finally:
            for h in handles:
                h.remove()
        cuda = self._device.type == "cuda"
        total: Dict[str, float] = {}
        calls: Dict[str, int] = {}
        ops: Dict[str, str] = {n: type(m).__name__ for n, m in self.module.named_modules()}

        def nearest_scopes(e) -> List:
            out = []
            for c in e.cpu_children:
                out.extend([c] if c.name.startswith(SCOPE_PREFIX) else nearest_scopes(c))
            return out

        for e in sorted(events, key=lambda e: e.time_range.start):
            if not e.name.startswith(SCOPE_PREFIX):
                continue
            inner = nearest_scopes(e)
            if cuda:
                own = _device_us(e) - sum(_device_us(c) for c in inner)
            else:
                own = e.time_range.elapsed_us() - sum(c.time_range.elapsed_us() for c in inner)
            path = e.name[len(SCOPE_PREFIX):]
            total[path] = total.get(path, 0.0) + max(own, 0.0) / 1000.0
            calls[path] = calls.get(path, 0) + 1
        timings = [LayerTiming(p, ops.get(p, ""), total[p], calls[p]) for p in total]
        run_ms = [(_device_us(r) if cuda else r.time_range.elapsed_us()) / 1000.0 for r in runs]
        return TorchProfile(timings, run_ms)

    def profile_layers(self, batch, iterations: int = 10) -> List[LayerTiming]:
        return self.profile_run(batch, iterations).timings
