"""Throughput and latency of models and artifacts, optionally in several processes at once.

Throughput: images/s at a batch size. Latency: ms per batch-1 call. With `jobs` > 1, that many
spawned processes (each with its own runner) wait on a barrier and time together; the result is the
mean of their medians (the paper's multi-process latency).

JSON (`BenchReport.to_dict`, `lowformer bench --json`), schema 1:
  {"schema": 1, "mode": "throughput"|"latency", "batch_size", "iterations", "warmup", "jobs",
   "threads", "device", "image_size",
   "machine": {"cpu", "cores", "cpu_flags", "load_average", "platform", "python", "versions", "date"},
   "results": [{"target", "kind": "model"|"artifact", "model", "backend", "format", "precision",
                "provider", "path", "image_size", "batch_size", "jobs", "threads",
                "median_ms", "mean_ms", "p90_ms", "min_ms", "max_ms"   (per batch; with jobs > 1
                                                                         the mean over jobs of each),
                "images_per_s"   (batch_size x jobs / mean_ms: all processes together),
                "macs_per_image", "gflops"   (achieved: MACs x 2 x images/s; null when unknown),
                "per_job": [{"median_ms", "mean_ms", "p90_ms", "min_ms", "max_ms", "n"}],
                "warnings": [...]}]}
"""
from __future__ import annotations

import datetime as _dt
import multiprocessing as mp
import os
import platform
import queue as _queue
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from lowformer.core.errors import LowformerError

JOB_TIMEOUT_S = 1800.0  # a spawned job that has not reported by then is a failure, not a hang


# --------------------------------------------------------------------------- timing


@dataclass
class TimingStats:
    """Per-call wall times in ms (device-synchronised)."""

    n: int
    median_ms: float
    mean_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def from_ms(cls, times: Sequence[float]) -> "TimingStats":
        if not times:
            raise LowformerError("no timed iterations")
        a = np.asarray(times, dtype=np.float64)
        return cls(len(a), float(np.median(a)), float(a.mean()), float(np.percentile(a, 90)),
                   float(a.min()), float(a.max()))

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def call_once(runner, batch: np.ndarray) -> Callable[[], None]:
    """A zero-argument function doing one inference call, finished on the device when it returns.

    Torch runners get the input placed on their device once (no host copies timed) and a CUDA
    synchronise after each call; ONNX Runtime's `run` is synchronous; other runners go through
    `Runner.run`, whose output is on the host.
    """
    import torch

    fixed = runner.input_spec.fixed_batch
    module = getattr(runner, "module", None)
    if runner.backend in ("pytorch", "torchscript") and module is not None and not (fixed and fixed != len(batch)):
        device = torch.device("cuda" if runner.device == "cuda" else "cpu")
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

        def run_torch() -> None:
            with torch.inference_mode():
                module(x)
            sync()
        return run_torch
    session = getattr(runner, "session", None)
    if runner.backend == "onnxruntime" and session is not None and not (fixed and fixed != len(batch)):
        feed = {runner.input_spec.name: np.ascontiguousarray(batch, np.float32)}
        names = [runner.output_name]
        return lambda: session.run(names, feed)
    return lambda: runner.run(batch)


def time_runner(runner, batch: np.ndarray, iterations: int, warmup: int = 10) -> TimingStats:
    fn = call_once(runner, batch)
    for _ in range(max(warmup, 0)):
        fn()
    times = []
    for _ in range(max(iterations, 1)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return TimingStats.from_ms(times)


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    """What to benchmark, in a form a spawned process can rebuild its own runner from."""

    spec: str  # model name, or artifact path
    kind: str  # "model" | "artifact"
    image_size: int = 224
    checkpoint: Optional[str] = None
    device: str = "cpu"
    threads: Optional[int] = None
    label: str = ""
    model: Optional[str] = None  # registry name, when known (for MACs)

    def build_runner(self):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            return self._build_runner()

    def _build_runner(self):
        if self.kind == "model":
            from lowformer.engines import InputSpec, PyTorchRunner
            from lowformer.models.registry import create_model

            model = create_model(self.spec, self.checkpoint)
            return PyTorchRunner(model, InputSpec(shape=(None, 3, self.image_size, self.image_size)),
                                 device=self.device, threads=self.threads)
        from lowformer.engines import load

        runner = load(self.spec, self.device, self.threads)
        runner.precision = precision_of(Path(self.spec), None) if runner.precision == "fp32" else runner.precision
        return runner


def precision_of(path: Path, entry: Optional[Dict[str, Any]]) -> str:
    """The manifest's precision; without a manifest, the export's file naming (model_fp16.onnx)."""
    if entry and entry.get("precision"):
        return str(entry["precision"])
    stem = path.stem.lower()
    return next((p for p in ("fp16", "int8") if stem.endswith(p) or f"_{p}" in stem), "fp32")


def _artifact_targets(raw: str, device: str, threads: Optional[int]) -> List[Target]:
    from lowformer.engines import resolve_artifacts
    from lowformer.artifacts import format_of

    out = []
    for path, entry, manifest in resolve_artifacts([raw]):
        size = None
        if manifest:
            shape = manifest.get("input", {}).get("shape") or [None, 3, 224, 224]
            size = int(shape[-1] or 224)
        fmt = (entry or {}).get("format") or format_of(path)
        label = f"{path.name} ({fmt} {precision_of(path, entry)})"
        if manifest:
            label = f"{manifest['model'].get('display') or manifest['model']['name']} {label}"
        out.append(Target(str(path), "artifact", size or 224, None, device, threads, label,
                          (manifest or {}).get("model", {}).get("name")))
    return out


def export_optit(model: str, image_size: int, checkpoint: Optional[str], folder: Path) -> Path:
    """The paper's --optit: BN-fused, scripted, frozen TorchScript (optimize_for_inference runs at load)."""
    import torch

    from lowformer.export.torchscript import export_torchscript
    from lowformer.models.fusion import fuse
    from lowformer.models.registry import create_model

    m = create_model(model, checkpoint)
    fuse(m)
    path = folder / f"{model.replace(':', '_')}-{image_size}.ts"
    export_torchscript(m, path, torch.zeros(1, 3, image_size, image_size))
    return path


def resolve_targets(args: Sequence[str], image_size: int = 224, checkpoint: Optional[str] = None,
                    device: str = "cpu", threads: Optional[int] = None, optit: bool = False,
                    workdir: Optional[Path] = None) -> List[Target]:
    """Artifacts (files, folders, manifests) and model names (`b1`, `timm:resnet50`) to targets."""
    from lowformer.models.registry import resolve

    out: List[Target] = []
    for raw in args:
        if os.path.exists(raw):
            out.extend(_artifact_targets(raw, device, threads))
            continue
        if raw.endswith((".onnx", ".ts", ".pt", ".engine", ".json")) or os.sep in raw:
            raise LowformerError(f"no such artifact or manifest: {raw}")
        spec = resolve(raw)
        if optit:
            if workdir is None:
                raise LowformerError("--optit needs a work folder")
            path = export_optit(spec.name, image_size, checkpoint, workdir)
            out.append(Target(str(path), "artifact", image_size, None, device, threads,
                              f"{spec.display} TorchScript (optit)", spec.name))
        else:
            out.append(Target(spec.name, "model", image_size, checkpoint, device, threads,
                              f"{spec.display} eager", spec.name))
    if not out:
        raise LowformerError("nothing to benchmark")
    return out


# --------------------------------------------------------------------------- results


@dataclass
class BenchResult:
    target: str
    kind: str
    model: Optional[str]
    backend: str
    format: str
    precision: str
    provider: str
    path: Optional[str]
    image_size: int
    batch_size: int
    jobs: int
    threads: Optional[int]
    median_ms: float
    mean_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    images_per_s: float
    macs_per_image: Optional[int] = None
    gflops: Optional[float] = None
    per_job: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class BenchReport:
    mode: str
    batch_size: int
    iterations: int
    warmup: int
    jobs: int
    threads: Optional[int]
    device: str
    image_size: int
    machine: Dict[str, Any]
    results: List[BenchResult] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        d = {"schema": 1, **{k: v for k, v in asdict(self).items() if k != "results"}}
        d["results"] = [r.to_dict() for r in self.results]
        return d


_FORMATS = {"pytorch": "eager", "torchscript": "torchscript", "onnxruntime": "onnx", "tensorrt": "tensorrt"}


def _combine(target: Target, describe: Dict[str, Any], stats: List[TimingStats], batch_size: int,
             macs: Optional[int]) -> BenchResult:
    """One result from each job's stats: mean of the per-job medians (and of the other statistics)."""
    mean = lambda key: statistics.fmean(getattr(s, key) for s in stats)  # noqa: E731
    mean_ms = mean("mean_ms")
    ips = batch_size * len(stats) * 1000.0 / mean_ms if mean_ms > 0 else 0.0
    gflops = macs * 2 * ips / 1e9 if macs else None
    return BenchResult(
        target=target.label or target.spec, kind=target.kind, model=target.model,
        backend=describe.get("backend", ""), format=_FORMATS.get(describe.get("backend", ""), ""),
        precision=describe.get("precision", "fp32"), provider=describe.get("provider", ""),
        path=target.spec if target.kind == "artifact" else None, image_size=target.image_size, batch_size=batch_size, jobs=len(stats),
        threads=describe.get("threads"), median_ms=mean("median_ms"), mean_ms=mean_ms, p90_ms=mean("p90_ms"),
        min_ms=mean("min_ms"), max_ms=mean("max_ms"), images_per_s=ips, macs_per_image=macs, gflops=gflops,
        per_job=[s.to_dict() for s in stats], warnings=list(describe.get("warnings") or []))


def macs_of(target: Target) -> Optional[int]:
    """MACs per image of the model behind a target (None when it cannot be known, e.g. no manifest)."""
    if not target.model:
        return None
    try:
        from lowformer.models.complexity import count_macs
        from lowformer.models.registry import create_model

        return int(count_macs(create_model(target.model), target.image_size))
    except Exception:  # a count is a nicety: never fail a benchmark over it
        return None


def _job_main(target: Target, batch_size: int, iterations: int, warmup: int, barrier, results, index: int) -> None:
    """One spawned benchmark process: build, warm up, wait for the others, time, report."""
    try:
        runner = target.build_runner()
        batch = runner.input_spec.example(batch_size)
        fn = call_once(runner, batch)
        for _ in range(max(warmup, 0)):
            fn()
        barrier.wait(timeout=JOB_TIMEOUT_S)
        times = []
        for _ in range(max(iterations, 1)):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
        results.put((index, "ok", TimingStats.from_ms(times).to_dict(), runner.describe()))
    except BaseException as e:  # report, never hang the parent
        try:
            barrier.abort()
        except Exception:
            pass
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        results.put((index, "error", msg, {}))


def run_jobs(target: Target, batch_size: int, iterations: int, warmup: int, jobs: int):
    """Time `target` in `jobs` spawned processes at once; (stats per job, runner description)."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(jobs)
    results = ctx.Queue()
    procs = [ctx.Process(target=_job_main, args=(target, batch_size, iterations, warmup, barrier, results, i),
                         daemon=True) for i in range(jobs)]
    for p in procs:
        p.start()
    got: Dict[int, Any] = {}
    errors: List[str] = []
    deadline = time.monotonic() + JOB_TIMEOUT_S
    try:
        while len(got) + len(errors) < jobs:
            try:
                index, status, payload, describe = results.get(timeout=1.0)
            except _queue.Empty:
                if time.monotonic() > deadline:
                    raise LowformerError(f"benchmark jobs did not finish within {JOB_TIMEOUT_S:.0f} s") from None
                dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
                if dead and results.empty():
                    raise LowformerError(f"a benchmark process died (exit code {dead[0].exitcode})") from None
                continue
            if status == "ok":
                got[index] = (TimingStats(**payload), describe)
            else:
                errors.append(payload)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    if errors:
        raise LowformerError(f"benchmark of {target.label or target.spec} failed: {errors[0]}")
    ordered = [got[i] for i in sorted(got)]
    return [s for s, _ in ordered], ordered[0][1]


def bench_target(target: Target, batch_size: int, iterations: int, warmup: int, jobs: int = 1,
                 with_macs: bool = True) -> BenchResult:
    if jobs > 1:
        stats, describe = run_jobs(target, batch_size, iterations, warmup, jobs)
    else:
        with target.build_runner() as runner:
            stats = [time_runner(runner, runner.input_spec.example(batch_size), iterations, warmup)]
            describe = runner.describe()
    return _combine(target, describe, stats, batch_size, macs_of(target) if with_macs else None)


def default_threads(jobs: int) -> Optional[int]:
    """Several processes share the cores: give each its share, so they do not oversubscribe."""
    if jobs <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // jobs)


def bench(args: Sequence[str], batch_size: int = 200, iterations: int = 400, warmup: int = 20,
          latency: bool = False, jobs: int = 1, threads: Optional[int] = None, device: str = "cpu",
          image_size: int = 224, optit: bool = False, checkpoint: Optional[str] = None,
          log: Callable[[str], None] = lambda s: None) -> BenchReport:
    """Benchmark each model/artifact in `args` (latency mode forces batch size 1)."""
    if jobs < 1:
        raise LowformerError("--jobs must be at least 1")
    if device not in ("cpu", "cuda"):
        raise LowformerError(f"unknown --device {device!r} (cpu, cuda)")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LowformerError("--device cuda asked for, but torch sees no CUDA GPU on this machine")
    bs = 1 if latency else batch_size
    threads = threads or default_threads(jobs)
    report = BenchReport("latency" if latency else "throughput", bs, iterations, warmup, jobs, threads,
                         device, image_size, machine_info())
    workdir = Path(tempfile.mkdtemp(prefix="lowformer-bench-")) if optit else None
    try:
        targets = resolve_targets(args, image_size, checkpoint, device, threads, optit, workdir)
        for t in targets:
            log(f"benchmarking {t.label or t.spec} (batch {bs}, {iterations} iterations, {jobs} job(s))")
            report.results.append(bench_target(t, bs, iterations, warmup, jobs))
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


# --------------------------------------------------------------------------- machine and peaks


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> List[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return sorted(f for f in ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
                          if f in have)
    return []


def machine_info() -> Dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "onnxruntime", "timm", "onnx", "lowformer"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]  # other work on the machine skews timings: say so
    except OSError:
        load = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "load_average": load,
            "platform": platform.platform(), "python": platform.python_version(), "versions": versions,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# GEMM shapes (M, K, N) of the 1x1 convolutions of a LowFormer at 224 px: ONNX Runtime runs them
# faster than one big square matmul, so the peak is the best over these too.
CONV_GEMM_SHAPES = ((3136, 64, 256), (784, 128, 512), (196, 256, 1024))


def matmul_peak_gflops(n: int = 2048, repeats: int = 5, threads: Optional[int] = None) -> float:
    """Measured FP32 peak: the best of torch.matmul (n x n) and ONNX Runtime's MatMul (prepacked
    constant weights, the kernel its convolutions use) at n x n and at convolution GEMM shapes."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)
        best = min(_timed(lambda: torch.matmul(a, b)) for _ in range(repeats))
    finally:
        torch.set_num_threads(old)
    rng = np.random.default_rng(0)
    peaks = [2 * n ** 3 / best / 1e9]
    for m, k, cols in ((n, n, n),) + CONV_GEMM_SHAPES:
        peaks.append(ort_matmul_gops("MatMul", rng.standard_normal((m, k), np.float32),
                                      rng.standard_normal((k, cols), np.float32), repeats, threads) or 0.0)
    return max(peaks)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ort_matmul_gops(op: str, a: np.ndarray, weight: np.ndarray, repeats: int, threads: Optional[int]) -> Optional[float]:
    """GOP/s of one ONNX Runtime MatMul / MatMulInteger node whose weight is a constant (prepacked)."""
    try:
        import onnxruntime as ort
        from onnx import helper, numpy_helper
    except ImportError:
        return None
    types = {np.dtype(np.float32): 1, np.dtype(np.uint8): 2, np.dtype(np.int8): 3}
    m, k = a.shape
    out_type = 1 if op == "MatMul" else 6  # float / int32
    graph = helper.make_graph([helper.make_node(op, ["a", "w"], ["y"])], op,
                              [helper.make_tensor_value_info("a", types[a.dtype], [m, k])],
                              [helper.make_tensor_value_info("y", out_type, [m, weight.shape[1]])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    sess.run(None, {"a": a})
    return 2 * m * k * weight.shape[1] / min(_timed(lambda: sess.run(None, {"a": a})) for _ in range(repeats)) / 1e9


def int8_peak_gops(n: int = 1024, repeats: int = 5, threads: Optional[int] = None) -> Dict[str, float]:
    """Measured INT8 matmul peaks (GOP/s): torch._int_mm and ONNX Runtime's MatMulInteger (u8 x s8
    with prepacked constant weights, the kernel its quantized convolutions use on x86)."""
    out: Dict[str, float] = {}
    try:
        import torch

        a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        torch._int_mm(a, b)
        out["torch_int_mm"] = 2 * n ** 3 / min(_timed(lambda: torch._int_mm(a, b)) for _ in range(repeats)) / 1e9
    except Exception:  # not every torch build has a CPU _int_mm
        pass
    rng = np.random.default_rng(0)
    ort_peak = max(ort_matmul_gops("MatMulInteger", rng.integers(0, 256, (m, k), dtype=np.uint8),
                                    rng.integers(-128, 128, (k, cols), dtype=np.int8), repeats, threads) or 0.0
                   for m, k, cols in ((n, n, n),) + CONV_GEMM_SHAPES)
    if ort_peak:
        out["ort_matmulinteger"] = ort_peak
    return out
