"""Throughput and latency of models and artifacts, optionally in several processes at once.

Throughput: images/s at a batch size. Latency: ms per batch-1 call. Timed by the one harness
(lowformer.core.harness): every target in its own worker process, in ROUNDS short rounds interleaved
across the targets, so that no runtime's threads disturb another's and a slow stretch of the machine
hits every target alike (on a GPU, one target after another). With `jobs` > 1, that many processes per
target (each with its own runner) time each round together; the result is the mean of their medians
(the paper's multi-process latency).

JSON (`BenchReport.to_dict`, `lowformer bench --json`), schema 1:
  {"schema": 1, "mode": "throughput"|"latency", "batch_size", "iterations" (0: timed by duration),
   "duration_s", "warmup", "jobs", "threads", "device", "image_size",
   "machine": {"cpu", "cores", "cpu_flags", "load_average", "platform", "python", "versions", "date"},
   "results": [{"target", "kind": "model"|"artifact", "model", "backend", "format", "precision",
                "provider" (OpenVINO: "cpu/<inference precision>", e.g. cpu/bf16), "path", "image_size",
                "batch_size", "jobs", "threads",
                "median_ms", "mean_ms", "p10_ms", "p90_ms", "min_ms", "max_ms"   (per batch; with jobs > 1
                                                                         the mean over jobs of each),
                "images_per_s"   (batch_size x jobs / mean_ms: all processes together),
                "macs_per_image", "gflops"   (achieved: MACs x 2 x images/s; null when unknown),
                "per_job": [{"median_ms", "mean_ms", "p90_ms", "min_ms", "max_ms", "n"}],
                "warnings": [...]   (reliability: unsteady timings, a busy machine, few calls)}]}
"""
from __future__ import annotations

import logging
import os
import shutil
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from lowformer.artifacts import LatencyRecord
from lowformer.bench.config import BenchConfig
from lowformer.compare import nonfinite
from lowformer.core.errors import LowformerError
from lowformer.core.machine import load_average, machine_info
from lowformer.core.harness import JobFailed, combine, drift_note, interleaved, wall_rounds
from lowformer.core.timing import MIN_ITERATIONS, TimingStats, reliability_warnings
from lowformer.core.progress import Progress, no_progress
from lowformer.targets import Target, resolve_targets

log = logging.getLogger(__name__)

DEFAULT_CPU_BATCH = 16  # the paper's 200 is a GPU figure: on a CPU it takes minutes per model
DEFAULT_CPU_DURATION_S = 5.0
MAX_ITERATIONS = 10000
ROUNDS = 5  # rounds per target, interleaved across the targets (fewer when fewer calls are asked for)
WORKER = "lowformer.bench.workers:open_target"  # the harness worker that builds a target's runner
JOB_TIMEOUT_S = 1800.0  # a worker that has not answered by then is a failure, not a hang
MEMORY_PER_JOB = 800 * 1024 ** 2  # what one worker process (interpreter, torch, a runner) holds, about
MEMINFO = "/proc/meminfo"


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
    p10_ms: float = 0.0
    macs_per_image: Optional[int] = None
    gflops: Optional[float] = None
    per_job: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    # sha256 of the artifact's bytes timed (its manifest entry's, as verified when resolved; None: no entry):
    # the timing is recorded only onto an entry that still has it (lowformer.artifacts.record_runs); not in JSON
    sha256: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        del d["sha256"]
        return d


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
    duration_s: Optional[float] = None  # seconds per target when the iterations were not fixed

    def to_dict(self) -> Dict[str, Any]:
        d = {"schema": 1, **{k: v for k, v in asdict(self).items() if k != "results"}}
        d["results"] = [r.to_dict() for r in self.results]
        return d


def _combine(target: Target, describe: Dict[str, Any], stats: List[TimingStats], batch_size: int,
             macs: Optional[int], drift: Optional[str] = None) -> BenchResult:
    """One result from each job's stats: mean of the per-job medians (and of the other statistics).
    An artifact with a static batch is timed at that batch, whatever was asked: its result says so."""
    mean = lambda key: statistics.fmean(getattr(s, key) for s in stats)  # noqa: E731
    mean_ms = mean("mean_ms")
    static = describe.get("fixed_batch")
    notes = []
    if static and int(static) != batch_size:
        notes.append(f"static batch {static}: each call runs {static} image(s), not {batch_size} (the artifact was "
                     f"exported with batch {static}); its figures are at batch {static}")
        batch_size = int(static)
    ips = batch_size * len(stats) * 1000.0 / mean_ms if mean_ms > 0 else 0.0
    gflops = macs * 2 * ips / 1e9 if macs else None
    return BenchResult(
        target=target.label or target.spec, kind=target.kind, model=target.model,
        backend=describe.get("backend", ""),
        format=describe.get("format", ""),
        precision=describe.get("precision", "fp32"), provider=describe.get("provider", ""),
        path=target.spec if target.kind == "artifact" else None, image_size=target.image_size, batch_size=batch_size, jobs=len(stats),
        threads=describe.get("threads"), median_ms=mean("median_ms"), mean_ms=mean_ms, p90_ms=mean("p90_ms"),
        min_ms=mean("min_ms"), max_ms=mean("max_ms"), images_per_s=ips, p10_ms=mean("p10_ms"),
        macs_per_image=macs, gflops=gflops, per_job=[s.to_dict() for s in stats],
        warnings=notes + list(describe.get("warnings") or []) + _reliability(stats) + ([drift] if drift else []),
        sha256=target.sha256 if target.kind == "artifact" else None)


def _reliability(stats: List[TimingStats]) -> List[str]:
    """The reliability warnings of the job whose timings are least steady (one line each)."""
    worst = max(stats, key=lambda s: s.spread)
    return reliability_warnings(worst, load_average(), os.cpu_count())


def macs_of(target: Target) -> Optional[int]:
    """MACs per image of the model behind a target (None when it cannot be known, e.g. no manifest)."""
    if not target.model:
        return None
    try:
        from lowformer.models.complexity import count_macs
        from lowformer.models.factory import create_model

        return int(count_macs(create_model(target.model), target.image_size))
    except Exception:  # a count is a nicety: never fail a benchmark over it
        return None


def check_output(runner, batch, target: Target) -> None:
    """The sanity check before timing: one call on the timed input; a model whose output holds NaN
    or Inf is refused (one line) rather than timed, since its latency would be of a broken model."""
    out = runner.run(batch)
    if hasattr(out, "detach"):  # torch runners return tensors
        out = out.detach().float().cpu().numpy()
    try:
        values = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError):
        return  # not one array of numbers (a test double): nothing to check
    bad = nonfinite(values, f"{target.label or target.spec}", "benchmark input", what="outputs")
    if bad:
        raise LowformerError(f"{bad}: not timed (the latency of a model that computes NaN/Inf means nothing)")


TimedTarget = Tuple[List[TimingStats], Dict[str, Any], Optional[str]]  # (stats per job, description, drift)


def rounds_for(iterations: Optional[int]) -> int:
    """Rounds per target: ROUNDS, or fewer when fewer timed calls are asked for."""
    return min(ROUNDS, max(iterations, 1)) if iterations else ROUNDS


def _group_size(jobs: int, device: str) -> int:
    """How many targets' workers are held at once: all that fit the available memory; one on a GPU
    (every worker holds its own GPU memory)."""
    if device == "cuda":
        return 1
    available = available_memory()
    return max(1, available // (MEMORY_PER_JOB * jobs)) if available else 1 << 30


def time_targets(targets: Sequence[Target], batch_size: int, iterations: Optional[int], warmup: int, jobs: int = 1,
                 duration: float = DEFAULT_CPU_DURATION_S,
                 on_round: Optional[Callable[[Target], None]] = None) -> List[TimedTarget]:
    """Time each target in its own worker process (`jobs` processes timing at once), through the harness
    (lowformer.core.harness): `warmup` untimed calls, then `iterations` timed calls, or about `duration`
    seconds of them when None (at least MIN_ITERATIONS, at most MAX_ITERATIONS), in rounds interleaved
    across the targets. Per target: (stats per job, runner description, drift note or None). A target that
    cannot be built or timed raises its own error (a LowformerError as it was raised) in one line."""
    rounds = rounds_for(iterations)
    group = _group_size(jobs, targets[0].device if targets else "cpu")
    out: List[TimedTarget] = []
    for at in range(0, len(targets), group):
        chunk = list(targets[at:at + group])
        done = interleaved([(str(i), WORKER, {"target": asdict(t)}) for i, t in enumerate(chunk)], [batch_size],
                           rounds, {batch_size: duration}, -(-MAX_ITERATIONS // rounds),
                           on_round=(lambda key, bs, r, samples: on_round(chunk[int(key)])) if on_round else None,
                           calls=iterations, min_calls=MIN_ITERATIONS, warmup=warmup, copies=jobs,
                           timeout_s=JOB_TIMEOUT_S)
        for i, t in enumerate(chunk):
            value = done[str(i)]
            if isinstance(value, JobFailed):
                raise value.user_error() or LowformerError(f"benchmark of {t.label or t.spec} failed: {value}")
            per_round = value[batch_size]
            stats = [TimingStats.from_ms([v for r in wall_rounds(per_round, c) for v in r]) for c in range(jobs)]
            out.append((stats, value["facts"], drift_note(combine(wall_rounds(per_round)))))
    return out


def run_jobs(target: Target, batch_size: int, iterations: Optional[int], warmup: int, jobs: int,
             duration: float = DEFAULT_CPU_DURATION_S):
    """Time `target` in `jobs` worker processes at once; (stats per job, runner description)."""
    stats, describe, _ = time_targets([target], batch_size, iterations, warmup, jobs, duration)[0]
    return stats, describe


def bench_target(target: Target, batch_size: int, iterations: Optional[int], warmup: int, jobs: int = 1,
                 with_macs: bool = True, duration: float = DEFAULT_CPU_DURATION_S,
                 progress: Progress = no_progress) -> BenchResult:
    """Time one target: `iterations` calls, or as many as fit in `duration` seconds when None."""
    with progress.task(target.label or target.spec, total=rounds_for(iterations)) as task:
        ((stats, describe, drift),) = time_targets([target], batch_size, iterations, warmup, jobs, duration,
                                                   on_round=lambda t: task.advance())
    return _combine(target, describe, stats, batch_size, macs_of(target) if with_macs else None, drift)


def available_memory() -> Optional[int]:
    """MemAvailable of /proc/meminfo in bytes; None where it cannot be read (not Linux)."""
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_jobs_fit(jobs: int) -> None:
    """Refuse more jobs than the available memory holds (MEMORY_PER_JOB each), in one line."""
    available = available_memory() if jobs > 1 else None
    if available is None:
        return
    most = max(1, available // MEMORY_PER_JOB)
    if jobs > most:
        raise LowformerError(f"--jobs {jobs} needs about {jobs * MEMORY_PER_JOB / 1e9:.1f} GB but "
                             f"{available / 1e9:.1f} GB is available: at most {most} job(s) on this machine")


def default_threads(jobs: int) -> Optional[int]:
    """Several processes share the cores: give each its share, so they do not oversubscribe."""
    if jobs <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // jobs)


def bench(args: Sequence[str], config: Optional[BenchConfig] = None, progress: Progress = no_progress,
          **fields: Any) -> BenchReport:
    """Benchmark each model/artifact in `args` (latency mode forces batch size 1).

    `config`: a BenchConfig (lowformer.bench.config), or its fields as keywords: batch_size,
    iterations, duration, warmup, latency, jobs, image_size, optit, checkpoint, record, and its
    RunConfig's device, threads, runtimes, precisions. An unknown keyword is one LowformerError.
    Defaults: the paper's batch 200 x 400 iterations on CUDA; on a CPU batch 16 for
    `DEFAULT_CPU_DURATION_S` seconds per target. `duration` (like trtexec) replaces `iterations`.
    `record`: write each artifact's timing into its manifest entry (`record_latencies`).
    """
    config = BenchConfig.build(config, **fields)
    jobs, device, iterations, duration = config.jobs, config.run.device, config.iterations, config.duration
    if jobs < 1:
        raise LowformerError("jobs must be at least 1")
    check_jobs_fit(jobs)
    if device not in ("cpu", "cuda"):
        raise LowformerError(f"unknown device {device!r} (cpu, cuda)")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise LowformerError("device cuda asked for, but torch sees no CUDA GPU on this machine")
    if iterations is not None and duration is not None:
        raise LowformerError("give iterations or a duration, not both")
    if iterations is None and duration is None and device == "cuda":
        iterations = 400
    duration = duration or DEFAULT_CPU_DURATION_S
    warmup = config.warmup if config.warmup is not None else (20 if device == "cuda" else 3)
    bs = 1 if config.latency else (config.batch_size or (200 if device == "cuda" else DEFAULT_CPU_BATCH))
    threads = config.run.threads or default_threads(jobs)
    report = BenchReport("latency" if config.latency else "throughput", bs, iterations or 0, warmup, jobs, threads,
                         device, config.image_size, machine_info(), duration_s=None if iterations else duration)
    workdir = Path(tempfile.mkdtemp(prefix="lowformer-bench-")) if config.optit else None
    try:
        targets = resolve_targets(args, config.image_size, config.checkpoint, config.run.replace(threads=threads),
                                  optit=config.optit, workdir=workdir)
        how = f"{iterations} iterations" if iterations else f"{duration:g} s"
        for t in targets:
            log.info("benchmarking %s (batch %d, %s, %d job(s))", t.label or t.spec, bs, how, jobs)
        with progress.task("benchmarking", total=len(targets) * rounds_for(iterations)) as task:
            timed = time_targets(targets, bs, iterations, warmup, jobs, duration, on_round=lambda t: task.advance())
        for t, (stats, describe, drift) in zip(targets, timed):
            report.results.append(_combine(t, describe, stats, bs, macs_of(t), drift))
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    warn_slow_int8(report.results)
    if config.record:
        record_latencies(report)
    return report


def latency_key(r: BenchResult) -> str:
    """`<runtime>/<precision>/b<batch>` (`/j<jobs>` added for several processes at once)."""
    key = f"{r.backend}/{r.precision or 'fp32'}/b{r.batch_size}"
    return key + (f"/j{r.jobs}" if r.jobs > 1 else "")


def latency_record(r: BenchResult, machine: Dict[str, Any], device: str) -> LatencyRecord:
    """What a manifest entry keeps of one timing: the figures, and the machine and date they hold for."""
    gpu = None
    if device == "cuda":
        import torch

        gpu = torch.cuda.get_device_name(0)
    return LatencyRecord(
        date=machine.get("date"), median_ms=r.median_ms, p10_ms=r.p10_ms, p90_ms=r.p90_ms, mean_ms=r.mean_ms,
        images_per_s=r.images_per_s, isa=machine.get("isa"), cpu=machine.get("cpu"), threads=r.threads,
        jobs=r.jobs, batch=r.batch_size, backend=r.backend, precision=r.precision, provider=r.provider,
        device=device, load_average=machine.get("load_average"), warnings=list(r.warnings), gpu=gpu)


def record_latencies(report: BenchReport) -> int:
    """Write each artifact result whose file has a manifest entry into `facts["latency"][latency_key]`
    of that entry (one locked update per folder), only when the entry still records the bytes that were
    timed (`r.sha256`; a file re-exported meanwhile is one warning line, not recorded); models and
    artifacts without a manifest are skipped. Returns how many were recorded."""
    from lowformer import artifacts as _artifacts

    return _artifacts.record_runs(
        (_artifacts.Measurement(r.path, r.sha256, latency_key(r), latency_record(r, report.machine, report.device))
         for r in report.results if r.kind == "artifact" and r.path), "latency")


def warn_slow_int8(results: Sequence[BenchResult]) -> None:
    """INT8 slower than FP32 of the same model, runtime and batch on this machine: say so in one line
    (on the INT8 result), with the fastest artifact of its folder whose verdict passes (what to ship
    here), rather than leave it to be found in the table."""
    from lowformer.core.machine import cpu_isa

    for r in results:
        if r.precision != "int8":
            continue
        fp32 = [f for f in results if f.precision in ("fp32", "bf16") and f.backend == r.backend and f.model == r.model
                and f.batch_size == r.batch_size and f.image_size == r.image_size
                and f.provider == r.provider]
        if fp32 and r.median_ms > min(f.median_ms for f in fp32):
            f = min(fp32, key=lambda x: x.median_ms)
            msg = (f"INT8 is slower than {f.precision.upper()} here ({r.median_ms:.2f} vs {f.median_ms:.2f} ms per batch on "
                   f"{r.backend}, {cpu_isa()}): prefer {f.target}; {fastest_passing(r, results)}")
            r.warnings.append(msg)
            log.warning("%s: %s", r.target, msg)


def fastest_passing(r: BenchResult, results: Sequence[BenchResult]) -> str:
    """`fastest passing artifact here: X (N ms, backend)` among the timed artifacts of `r`'s folder
    at its batch size, by each one's verdict (lowformer.verdict) from its manifest."""
    from lowformer import artifacts as _artifacts
    from lowformer.verdict import PASS, artifact_verdict

    if not r.path:
        return "no manifest to judge the artifacts by"
    folder = Path(r.path).resolve().parent
    try:
        manifest = _artifacts.Manifest.load(folder)
    except LowformerError as e:
        return f"no verdicts to compare ({e})"
    passing = []
    for c in results:
        if c.kind != "artifact" or not c.path or Path(c.path).resolve().parent != folder \
                or c.batch_size != r.batch_size:
            continue
        entry = manifest.entry(Path(c.path).name)
        if entry is not None and artifact_verdict(manifest, entry).status == PASS:
            passing.append(c)
    if not passing:
        return f"no timed artifact of {folder.name} has a passing verdict (validate them)"
    best = min(passing, key=lambda c: c.median_ms)
    how = f"{best.backend}" + (f" {best.provider}" if best.provider and best.provider != "cpu" else "")
    return f"fastest passing artifact here: {Path(best.path).name} ({best.median_ms:.2f} ms, {how})"
