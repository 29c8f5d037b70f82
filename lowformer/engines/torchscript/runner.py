"""TorchScript runner: a `.ts` module loaded with `torch.jit.load` (optimize_for_inference on the CPU),
profiled per line of its serialized code."""
from __future__ import annotations

import contextlib
import re
import warnings
from typing import Dict, List, Optional, Sequence

import torch

from lowformer.core.errors import LowformerError
from lowformer.models.checkpoints import describe_file
from lowformer.engines.base import InputSpec, LayerTiming
from lowformer.engines.torchscript.names import graph_nodes, line_modules
from lowformer.engines.pytorch.runner import TorchProfile, _TorchModuleRunner, _device_us

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



class TorchScriptRunner(_TorchModuleRunner):
    backend = "torchscript"
    format = "torchscript"
    profile_naming = "code-lines"
    profile_source = "torch.profiler with_stack: ops per serialized code line, start-to-next-start"

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

    def code_line_modules(self, model, example, method: str = "script"):
        """({code line: module path}, share of ops matched): this file's code lines named through the
        module it was exported from (lowformer.engines.torchscript.names)."""
        return line_modules(self.path, model, example, method)

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
