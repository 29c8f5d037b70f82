"""Runners for `.pt2` archives: torch.export programs (`model.pt2`) and AOTInductor packages
(`model_aoti_cpu.pt2`, `model_aoti_cuda.pt2`).

Both kinds are zip archives with a `.pt2` suffix. Which one a file is comes from its manifest entry
("pt2" or "aoti"); without a manifest, from the archive itself: an AOTInductor package holds
`<archive>/data/aotinductor/<model>/...`, an exported program `<archive>/models/<model>.json`.

Per-layer profiles name modules exactly, from the exported graph's `nn_module_stack`:
- pt2: the program's graph runs node by node under one torch.profiler scope per node;
- aoti: the package is compiled with kernel profiling (each C++ kernel and each extern call is a
  profiler event) and with kernel_information.json (each kernel's source nodes of the exported
  graph); the node -> module map travels in the package's metadata. A kernel fused from nodes of
  several modules has its time split evenly over them (rows say `kernel-split`).
"""
from __future__ import annotations

import contextlib
import difflib
import json
import logging
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from lowformer.core.errors import LowformerError, first_line
from lowformer.core.machine import all_cpu_flags
from lowformer.engines.base import InputSpec, LayerTiming, Runner
from lowformer.engines.pytorch.runner import (RUN_SCOPE, TorchProfile, _activities, _device_us, _torch_device,
                                            run_on_device)

log = logging.getLogger(__name__)

PT2, AOTI = "pt2", "aoti"
NODE_SCOPE = "lowformer.node:"
# AOTInductor metadata written by lowformer.engines.pt2.writer (strings inside the compiled package)
META_TORCH = "lowformer_torch"
META_NODES = "lowformer_node_modules"
_KERNEL_EVENT = re.compile(r"^graph_\d+_")
# ISA names in a package's AOTI_CPU_ISA -> /proc/cpuinfo flags they need
_ISA_FLAGS = {"avx512": ("avx512f", "avx512bw", "avx512dq", "avx512vl"), "avx512_vnni": ("avx512_vnni",),
              "amx_tile": ("amx_tile",), "avx2": ("avx2", "fma"), "neon": (), "sve256": ("sve",)}


def _names(path: str) -> List[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise LowformerError(f"{path}: not a complete .pt2 archive (truncated, or not a zip: {first_line(e, limit=200)})") from None


def package_kind(path: str) -> str:
    """"aoti" or "pt2", from the archive's contents."""
    names = _names(path)
    if any("/data/aotinductor/" in n for n in names):
        return AOTI
    if any("/models/" in n and n.endswith(".json") for n in names):
        return PT2
    raise LowformerError(f"{path}: a .pt2 archive with neither an exported program nor an AOTInductor model")


def _zip_json(path: str, pattern: str) -> Optional[Dict[str, Any]]:
    rx = re.compile(pattern)
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if rx.search(n)), None)
            return json.loads(z.read(name)) if name else None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise LowformerError(f"{path}: cannot read its .pt2 archive ({first_line(e, limit=200)})") from None


def aoti_metadata(path: str) -> Dict[str, str]:
    """The package's AOTInductor metadata (device, platform, CPU ISA, and lowformer's keys)."""
    return _zip_json(path, r"/data/aotinductor/model/[^/]+\.wrapper_metadata\.json$") or {}


def kernel_information(path: str) -> Dict[str, Any]:
    """{"kernel:N": {"pre_grad_nodes": [...], ...}} of a package compiled with provenance tracking."""
    return _zip_json(path, r"/data/aotinductor/model/kernel_information\.json$") or {}


def program_torch_version(path: str) -> Optional[str]:
    try:
        doc = _zip_json(path, r"/models/[^/]+\.json$")
    except LowformerError:
        return None
    return str(doc.get("torch_version")) if doc and doc.get("torch_version") else None


def _minor(version: str) -> Tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def module_of_stack(stack: Any) -> str:
    """The innermost module path of an `nn_module_stack` ({key: (path, class)}; '' outside any module)."""
    if not isinstance(stack, dict):
        return ""
    for value in reversed(list(stack.values())):
        path = value[0] if isinstance(value, (tuple, list)) and value else value
        if isinstance(path, str) and path and not path.startswith("_empty_nn_module_stack"):
            return path
    return ""


def module_of_node(node) -> str:
    """Module path of an exported-graph node from its `nn_module_stack` ('' = the model's own glue)."""
    return module_of_stack(node.meta.get("nn_module_stack"))


def node_modules(graph) -> Dict[str, str]:
    """{node name: module path} of every op node of an exported graph that has a module."""
    out = {}
    for n in graph.nodes:
        if n.op == "call_function":
            mod = module_of_node(n)
            if mod:
                out[n.name] = mod
    return out


def _cpu_flags() -> Optional[frozenset]:
    return all_cpu_flags() or None  # None: unknown (no /proc/cpuinfo)


def missing_isa(package_isa: str) -> List[str]:
    """The ISA names of a package that this CPU lacks ([] when unknown, e.g. no /proc/cpuinfo)."""
    flags = _cpu_flags()
    if flags is None:
        return []
    return [t for t in package_isa.lower().split() if any(f not in flags for f in _ISA_FLAGS.get(t, (t,)))]


def _as_input(batch, device: torch.device) -> torch.Tensor:
    x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch, np.float32))
    return x.to(device)


@contextlib.contextmanager
def _kineto_quiet(device: torch.device) -> Iterator[None]:
    import os

    if device.type == "cpu":  # Kineto otherwise logs "gpuGetDeviceCount failed" as an ERROR
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    yield


def _profiled_runs(fn, x: torch.Tensor, device: torch.device, iterations: int, warmup: int):
    """`warmup` untimed calls of `fn(x)`, then `iterations` under torch.profiler, each in a RUN_SCOPE
    record (finished on the GPU before the next); returns the profiler."""
    from torch.profiler import profile, record_function

    with _kineto_quiet(device), torch.inference_mode():
        for _ in range(max(warmup, 0)):
            fn(x)
        with profile(activities=_activities(device)) as prof:
            for _ in range(max(iterations, 1)):
                with record_function(RUN_SCOPE):
                    fn(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
    return prof


@contextlib.contextmanager
def quiet_torch_logs(*names: str) -> Iterator[None]:
    """torch loggers raised to ERROR for the duration (their warnings restate ours, or mislead)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


class _Captured(logging.Handler):
    """Holds a torch logger's records; the first line of a logged exception is the cause of a failure."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logger
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def causes(self) -> List[str]:
        return [first_line(r.exc_info[1], limit=200) for r in self.records if r.exc_info and r.exc_info[1] is not None]

    def replay(self) -> None:
        """After a success: what torch said, said as torch would have."""
        for record in self.records:
            self.logger.handle(record)


@contextlib.contextmanager
def _captured(name: str) -> Iterator[_Captured]:
    """A torch logger's records held back (on a failure they restate the error we raise)."""
    logger = logging.getLogger(name)
    handler = _Captured(logger)
    handlers, propagate = list(logger.handlers), logger.propagate
    logger.handlers = [handler]  # torch._logging gives its loggers handlers of their own
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.handlers = handlers
        logger.propagate = propagate


class ExportedProgramRunner(Runner):
    """A `torch.export` program (`torch.export.load(path).module()`), run by torch eagerly."""

    backend = PT2
    format = PT2
    profile_naming = "graph-nodes"
    native = "torch"
    profile_source = "torch.profiler, one scope per exported-graph node, named by its nn_module_stack (exact)"

    def __init__(self, program, input_spec: InputSpec, device: str = "cpu", threads: Optional[int] = None,
                 path: Optional[str] = None):
        super().__init__(input_spec, "fp32", device, threads, path)
        if threads:
            torch.set_num_threads(threads)
        self._device = _torch_device(device)
        if self._device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self._device.type)
        self.program = program
        self.module = program.module()
        self.provider = self._device.type
        self.node_modules = node_modules(self.module.graph)

    @classmethod
    def from_file(cls, path: str, input_spec: InputSpec, device: str = "cpu",
                  threads: Optional[int] = None) -> "ExportedProgramRunner":
        _names(path)  # a truncated archive: one line before torch reads it
        with _captured("torch.export") as said:
            try:
                program = torch.export.load(path)
            except Exception as e:
                saved = program_torch_version(path)
                other = f" (saved by torch {saved}; this is torch {torch.__version__}: export it again)" \
                    if saved and saved != torch.__version__ else ""
                cause = said.causes[0] if said.causes else first_line(e, limit=200)
                raise LowformerError(f"cannot load torch.export program {path}: {cause}{other}") from None
        said.replay()
        return cls(program, input_spec, device, threads, path)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return run_on_device(self.module, x, self._device)

    def profile_run(self, batch, iterations: int = 10, warmup: int = 2) -> TorchProfile:
        """Time of every op node of the exported graph: one profiler scope per node, its time the
        time of the aten ops inside (the interpreter's own Python time left out); each node names
        its module by its nn_module_stack (exact)."""
        from torch.profiler import record_function

        class Scoped(torch.fx.Interpreter):
            def run_node(self, n):
                if n.op != "call_function":
                    return super().run_node(n)
                with record_function(NODE_SCOPE + n.name):
                    return super().run_node(n)

        interp = Scoped(self.module)
        ops = {n.name: str(n.target) for n in self.module.graph.nodes if n.op == "call_function"}
        prof = _profiled_runs(interp.run, _as_input(batch, self._device), self._device, iterations, warmup)
        cuda = self._device.type == "cuda"
        total: Dict[str, float] = {}
        calls: Dict[str, int] = {}
        order: List[str] = []
        events = prof.events()
        for e in sorted(events, key=lambda e: e.time_range.start):
            if not e.name.startswith(NODE_SCOPE):
                continue
            name = e.name[len(NODE_SCOPE):]
            if cuda:
                us = _device_us(e)
            else:
                kids = e.cpu_children
                us = sum(c.time_range.elapsed_us() for c in kids) if kids else e.time_range.elapsed_us()
            if name not in total:
                order.append(name)
            total[name] = total.get(name, 0.0) + us / 1000.0
            calls[name] = calls.get(name, 0) + 1
        runs = sorted((e for e in events if e.name == RUN_SCOPE), key=lambda e: e.time_range.start)
        run_ms = [(_device_us(r) if cuda else r.time_range.elapsed_us()) / 1000.0 for r in runs]
        timings = [LayerTiming(n, ops.get(n, ""), total[n], calls[n],
                               [self.node_modules[n]] if n in self.node_modules else []) for n in order]
        return TorchProfile(timings, run_ms)

    def profile_layers(self, batch, iterations: int = 10) -> List[LayerTiming]:
        return self.profile_run(batch, iterations).timings


def _parse_node_map(text: str) -> Dict[str, str]:
    out = {}
    for item in (text or "").split(";"):
        node, _, module = item.partition("=")
        if node and module:
            out[node] = module
    return out


class AOTIRunner(Runner):
    """An AOTInductor package (`torch._inductor.aoti_load_package`): compiled C++ kernels, no Python."""

    backend = AOTI
    format = AOTI
    profile_naming = "graph-nodes"
    native = "torch"
    profile_source = ("torch.profiler kernel events of the AOTInductor package, named through kernel_information.json "
                      "and the exported graph's nn_module_stack; fused kernels split over their modules")

    def __init__(self, model, input_spec: InputSpec, device: str, threads: Optional[int], path: str,
                 metadata: Dict[str, str], kernels: Dict[str, Any], node_map: Dict[str, str]):
        super().__init__(input_spec, "fp32", device, threads, path)
        self.model = model
        self._device = torch.device(device)
        self.provider = device
        self.metadata = metadata
        self.kernels = kernels
        self.node_map = node_map

    @classmethod
    def from_file(cls, path: str, input_spec: InputSpec, device: str = "cpu", threads: Optional[int] = None,
                  facts: Optional[Dict[str, Any]] = None) -> "AOTIRunner":
        name = Path(path).name
        if package_kind(path) != AOTI:
            raise LowformerError(f"{path} is a torch.export program, not an AOTInductor package")
        meta = aoti_metadata(path)
        built = meta.get(META_TORCH) or (facts or {}).get("torch")
        if built and _minor(built) != _minor(torch.__version__):
            raise LowformerError(f"{name} was compiled by torch {built} and this is torch {torch.__version__}: "
                                 "an AOTInductor package runs only with the torch that compiled it; export it again")
        target = meta.get("AOTI_DEVICE_KEY", (facts or {}).get("device", "cpu")) or "cpu"
        import platform

        machine = meta.get("AOTI_MACHINE")
        if machine and machine != platform.machine():
            raise LowformerError(f"{name} was compiled for {machine} and this machine is {platform.machine()}")
        if target == "cpu":
            lacking = missing_isa(meta.get("AOTI_CPU_ISA", ""))
            if lacking:
                raise LowformerError(f"{name} was compiled for a CPU with {meta.get('AOTI_CPU_ISA')}; this CPU lacks "
                                     f"{', '.join(lacking)}: export it again on the machine that runs it")
            if device == "cuda":
                log.warning("%s is compiled for the CPU: it runs there, whatever --device says", name)
        elif target == "cuda":
            _torch_device("cuda")  # one line when torch sees no GPU
        if threads:
            torch.set_num_threads(threads)
        try:
            # torch logs "Loading outdated pt2 file" before its second try, and "No CUDA runtime
            # is found" on CPU-only machines: this error line says what went wrong instead
            with quiet_torch_logs("torch._inductor.package.package", "torch.utils.cpp_extension"):
                model = torch._inductor.aoti_load_package(path)
        except Exception as e:
            raise LowformerError(f"cannot load AOTInductor package {path}: {first_line(e, limit=200)}") from None
        node_map = _parse_node_map(meta.get(META_NODES, ""))
        return cls(model, input_spec, target, threads, path, meta, kernel_information(path), node_map)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.model(x.to(self._device))
        if self._device.type == "cuda":
            torch.cuda.synchronize()
        return out.float().cpu()

    def _kernel_sequence(self) -> List[Tuple[str, str]]:
        """[(kernel key "name:N", name)] in the order the compiled wrapper calls them."""
        def index(key: str) -> int:
            tail = key.rsplit(":", 1)[-1]
            return int(tail) if tail.isdigit() else 1 << 30
        keys = sorted(self.kernels, key=index)
        return [(k, k.rsplit(":", 1)[0]) for k in keys]

    def kernel_modules(self, key: str) -> List[str]:
        """Modules of a kernel's source nodes (distinct, in order)."""
        nodes = (self.kernels.get(key) or {}).get("pre_grad_nodes") or []
        return list(dict.fromkeys(self.node_map[n] for n in nodes if n in self.node_map))

    def profile_run(self, batch, iterations: int = 10, warmup: int = 2) -> TorchProfile:
        """Time of every kernel call (the profiler events directly under each call), matched in
        order to the package's kernel list and, through its source nodes, to modules."""

        if self._device.type != "cpu":
            raise LowformerError("per-layer profiling of an AOTInductor CUDA package is not available yet")
        prof = _profiled_runs(self.model, _as_input(batch, self._device), self._device, iterations, warmup)
        events = prof.events()
        runs = sorted((e for e in events if e.name == RUN_SCOPE), key=lambda e: e.time_range.start)
        sequence = self._kernel_sequence()
        warnings: List[str] = []
        if not self.kernels:
            warnings.append(f"{Path(self.path or '').name} has no kernel_information.json: kernels cannot be "
                            "named (export it again with lowformer)")
        if not self.node_map:
            warnings.append("the package carries no node -> module map: kernels are not mapped to modules")
        total: Dict[str, float] = {}
        calls: Dict[str, int] = {}
        ops: Dict[str, str] = {}
        modules: Dict[str, List[str]] = {}
        order: List[str] = []
        matched_runs = []
        for run in runs:
            kids = sorted(run.cpu_children, key=lambda e: e.time_range.start)
            names = [_KERNEL_EVENT.sub("", e.name) for e in kids]
            keys = _align(names, [n for _k, n in sequence], [k for k, _n in sequence])
            matched_runs.append(sum(1 for k in keys if k) / max(len(kids), 1))
            for e, name, key in zip(kids, names, keys):
                label = key or f"unmatched:{name}"
                if label not in total:
                    order.append(label)
                    ops[label] = name
                    modules[label] = self.kernel_modules(key) if key else []
                total[label] = total.get(label, 0.0) + e.time_range.elapsed_us() / 1000.0
                calls[label] = calls.get(label, 0) + 1
        if matched_runs and min(matched_runs) < 0.99:
            warnings.append(f"only {min(matched_runs):.0%} of the profiled kernel calls matched the package's kernel list")
        run_ms = [r.time_range.elapsed_us() / 1000.0 for r in runs]
        timings = [LayerTiming(k, ops[k], total[k], calls[k], modules[k]) for k in order]
        return TorchProfile(timings, run_ms, warnings)

    def profile_layers(self, batch, iterations: int = 10) -> List[LayerTiming]:
        return self.profile_run(batch, iterations).timings

    def describe(self) -> Dict[str, Any]:
        d = super().describe()
        d["cpu_isa"] = self.metadata.get("AOTI_CPU_ISA")
        return d


def _align(events: Sequence[str], kernels: Sequence[str], keys: Sequence[str]) -> List[Optional[str]]:
    """The kernel key of each profiled event (None where the sequences disagree)."""
    out: List[Optional[str]] = [None] * len(events)
    matcher = difflib.SequenceMatcher(None, list(events), list(kernels), autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            out[block.a + k] = keys[block.b + k]
    return out


def load_pt2(path: str, input_spec: InputSpec, device: str = "cpu", threads: Optional[int] = None,
             fmt: Optional[str] = None, facts: Optional[Dict[str, Any]] = None) -> Runner:
    """The runner for a `.pt2` file: `fmt` (the manifest entry's format) decides, else the archive."""
    kind = fmt if fmt in (PT2, AOTI) else package_kind(path)
    if kind == AOTI:
        return AOTIRunner.from_file(path, input_spec, device, threads, facts)
    return ExportedProgramRunner.from_file(path, input_spec, device, threads)
