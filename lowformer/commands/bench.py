"""`lowformer bench`: throughput or latency of models and artifacts, in one or several processes."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import click

from lowformer.commands.errors import handle_errors
from lowformer.commands.options import ModelOptions, RunOptions, json_option, options_into, runtime_options
from lowformer.commands.progress import RichProgress
from lowformer.commands.render import emit_json, print_bench


@dataclass(frozen=True)
class BenchTimingOptions:
    """What `bench` times and how long (their click parameter names)."""

    batch_size: Optional[int]
    iterations: Optional[int]
    duration: Optional[float]
    warmup: Optional[int]
    latency: bool
    jobs: int

    def fields(self) -> Dict[str, Any]:
        """Keywords of lowformer.bench.config.BenchConfig."""
        return asdict(self)


@click.command("bench")
@click.argument("targets", nargs=-1, required=True)
@click.option("--batch-size", type=click.IntRange(1, 65536),
              help="Images per call [default: 200 (the paper's) on cuda, 16 on cpu].")
@click.option("--iterations", type=click.IntRange(1), help="Timed calls per target [default: 400 on cuda].")
@click.option("--duration", type=click.FloatRange(0.1), help="Seconds of timed calls per target, instead of "
                                                             "--iterations [default on cpu: 5].")
@click.option("--warmup", type=click.IntRange(0), help="Untimed calls first [default: 20 on cuda, 3 on cpu].")
@click.option("--latency", is_flag=True, help="Latency mode: ms per batch-1 call (ignores --batch-size).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Worker processes per target timing together (one runner each); reports the mean of their medians.")
@click.option("--threads", type=click.IntRange(1), help="Threads per process [default: runtime's; cores/jobs with --jobs].")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(32, 2048), help="For MODEL arguments.")
@click.option("--optit", is_flag=True, help="Benchmark MODELs as BN-fused TorchScript + optimize_for_inference (the paper's --optit).")
@click.option("--checkpoint", type=click.Path(), help="Weights for MODEL arguments (default: random init).")
@json_option("Print one JSON document to stdout (schema in lowformer/bench/run.py).")
@runtime_options
@click.option("--no-record", is_flag=True, help="Do not write the timings into the artifacts' manifests.")
@handle_errors
@options_into("timing", BenchTimingOptions)
@options_into("run", RunOptions)
@options_into("models", ModelOptions)
def bench_cmd(targets: Tuple[str, ...], timing: BenchTimingOptions, run: RunOptions, models: ModelOptions,
              optit: bool, as_json: bool, no_record: bool) -> None:
    """Throughput (images/s) or latency (ms) of MODEL_OR_ARTIFACT... (b1, timm:resnet50, model.onnx, folders).

    \b
    `lowformer bench b1 --latency --optit` reproduces the paper's latency command;
    `--jobs 4` times four processes at once (the paper's multi-process latency).
    """
    from lowformer.bench import bench
    from lowformer.bench.config import BenchConfig
    from lowformer.bench.run import record_latencies

    if timing.iterations and timing.duration:
        raise click.UsageError("--iterations and --duration exclude each other")
    config = BenchConfig.build(**timing.fields(), **run.fields(), **models.fields(), optit=optit, record=False)
    report = bench(list(targets), config, progress=RichProgress())
    if as_json:
        emit_json(report.to_dict())
    else:
        print_bench(report)
    if not no_record:  # after the table: a folder we cannot write to still shows what was measured
        record_latencies(report)
