"""PyTorch eager and TorchScript runners."""
from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from lowformer.core.errors import LowformerError
from lowformer.models.checkpoints import describe_file
from lowformer.core.native_output import drop_native_lines
from lowformer.engines.base import InputSpec, LayerTiming, Runner

SCOPE_PREFIX = "lowformer.module:"  # record_function scopes around eager modules
RUN_SCOPE = "lowformer.run"
# TorchScript ops report the serialized code line they come from: `code/__torch__/...py(32): forward`.
_TS_FRAME = re.compile(r"^(code/__torch__/.+?\.py)\((\d+)\)")
_TS_SOURCE = re.compile(r'Serialized\s+File "(code/__torch__/[^"]+)", line (\d+)')
# torch 2.14 warns on every TorchScript call: "`torch.jit.load` is deprecated. Please switch to `torch.export`."
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


@contextlib.contextmanager
def jit_deprecation_filtered():
    """Hide torch's own FutureWarning that torch.jit is deprecated (only that one: TorchScript stays
    the paper's --optit path here, and `--to pt2` is the torch.export one)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning, module=r"torch\.jit\.")
        yield


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


def graph_nodes(block) -> Iterator:
    """Every node of a TorchScript graph or block, nested blocks (if/loop bodies) included."""
    for n in block.nodes():
        yield n
        for b in n.blocks():
            yield from graph_nodes(b)


class TorchScriptRunner(_TorchModuleRunner):
    backend = "torchscript"

    @classmethod
    def from_file(cls, path: str, input_spec: InputSpec, device: str = "cpu",
                  threads: Optional[int] = None) -> "TorchScriptRunner":
        try:
            with jit_deprecation_filtered():
                module = torch.jit.load(path, map_location="cpu")
        except Exception as e:
            what = describe_file(path)  # a state dict given as a TorchScript file says so
            detail = str(e).splitlines()[0] if what == "a TorchScript module" else what
            raise LowformerError(f"cannot load TorchScript file {path}: {detail}") from None
        if device == "cpu":
            module = optimize_loaded(module)
        return cls(module, input_spec, "fp32", device, threads, path)

    def line_ops(self) -> Dict[str, str]:
        """{"code/...py:LINE": op kind} of the graph that runs (after optimize_for_inference)."""
        out: Dict[str, str] = {}
        try:
            graph = self.module.graph
        except Exception:  # not every ScriptModule exposes a graph
            return out
        for n in graph_nodes(graph):
            kind = n.kind()
            if not (kind.startswith("aten::") or "mkldnn" in kind.lower()):
                continue  # constants, lists, control flow: no compute of their own
            m = _TS_SOURCE.search(n.sourceRange() or "")
            if m:
                out.setdefault(f"{m.group(1)}:{m.group(2)}", kind)
        return out

    def profile_run(self, batch, iterations: int = 10, warmup: int = 2) -> TorchProfile:
        """Time per line of the module's serialized code (`code/...py:LINE`), which names one op.

        Each op the TorchScript interpreter records says (with_stack) which code line it runs.
        MKLDNN-prepacked convolutions from optimize_for_inference record only their output
        allocation (`aten::empty`), so every op is credited with the time from its start to the
        next op's start: the silent convolution work lands on the line that allocated for it.
        Layout conversions inserted by the pass carry no line: `to_mkldnn` belongs to the op it
        feeds, other unlabelled ops to the op before them.
        """
        events, runs = self._profiled(batch, iterations, warmup, with_stack=True)
        cuda = self._device.type == "cuda"
        line_ops = self.line_ops()
        total: Dict[str, float] = {}
        calls: Dict[str, int] = {}
        run_ms: List[float] = []
        for run in runs:
            forward = _script_forward(run)
            if forward is None:
                continue
            ops = sorted(forward.cpu_children, key=lambda e: e.time_range.start)
            end = forward.time_range.end
            lines = _lines_of(ops)
            for i, (e, line) in enumerate(zip(ops, lines)):
                nxt = ops[i + 1].time_range.start if i + 1 < len(ops) else end
                us = _device_us(e) if cuda else max(nxt - e.time_range.start, 0)
                key = line or f"unlabelled:{e.name}"
                total[key] = total.get(key, 0.0) + us / 1000.0
                calls[key] = calls.get(key, 0) + 1
            run_ms.append((_device_us(forward) if cuda else forward.time_range.elapsed_us()) / 1000.0)
        if not run_ms:
            raise LowformerError("torch.profiler recorded no TorchScript forward call to attribute")
        timings = [LayerTiming(k, line_ops.get(k, k.split(":", 1)[1] if k.startswith("unlabelled:") else ""),
                               total[k], calls[k]) for k in total]
        return TorchProfile(timings, run_ms)

    def profile_layers(self, batch, iterations: int = 10) -> List[LayerTiming]:
        return self.profile_run(batch, iterations).timings


def _script_forward(run_event):
    """The TorchScript `forward` event under one `lowformer.run` scope (breadth-first)."""
    queue = list(run_event.cpu_children)
    while queue:
        e = queue.pop(0)
        if e.name == "forward":
            return e
        queue.extend(e.cpu_children)
    return None


def _line_of(event) -> Optional[str]:
    for frame in event.stack or []:
        m = _TS_FRAME.match(frame)
        if m:
            return f"{m.group(1)}:{m.group(2)}"
    return None


def _lines_of(ops: Sequence) -> List[Optional[str]]:
    lines = [_line_of(e) for e in ops]
    out = list(lines)
    for i, e in enumerate(ops):
        if out[i]:
            continue
        later = next((lines[j] for j in range(i + 1, len(ops)) if lines[j]), None)
        earlier = next((out[j] for j in range(i - 1, -1, -1) if out[j]), None)
        out[i] = (later or earlier) if e.name == "aten::to_mkldnn" else (earlier or later)
    return out


def optimize_loaded(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """`torch.jit.optimize_for_inference` on a loaded frozen module.

    Its output (MKLDNN-prepacked constants) cannot be saved and loaded again by torch, so export
    saves the frozen module and this pass runs when the artifact is loaded.
    """
    with jit_deprecation_filtered():
        return torch.jit.optimize_for_inference(module)
