"""`lowformer sweep`: a models x formats x batch sizes matrix exported, validated and timed as Ray tasks
(a Ray cluster, a local Ray, or this process), merged into the benchmark table of each ISA."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import click

from lowformer.commands.errors import handle_errors
from lowformer.commands.options import json_option, option_group
from lowformer.commands.progress import RichProgress
from lowformer.commands.render import emit_json, print_sweep
from lowformer.core.errors import LowformerError


def _list(text: Optional[str]) -> Tuple[str, ...]:
    return tuple(v.strip() for v in (text or "").split(",") if v.strip())


def parse_batch_sizes(text: str) -> Tuple[int, ...]:
    """'1,16' -> (1, 16); one usage error naming the flag otherwise."""
    try:
        sizes = tuple(int(v) for v in _list(text))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"comma-separated whole numbers of at least 1, e.g. 1,16; not {text!r}",
                                 param_hint="--batch-sizes")
    return sizes


def parse_formats(text: Optional[str]) -> Tuple[str, ...]:
    """'onnx-fp32,onnx-int8' -> the formats (empty: every one); one usage error for an unknown one."""
    from lowformer.sweep.formats import FORMATS

    formats = _list(text)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise click.BadParameter(f"unknown format {bad[0]!r} (one of {', '.join(FORMATS)})", param_hint="--formats")
    return formats


def parse_labels(items: Tuple[str, ...]) -> Dict[str, str]:
    """Repeated `--label KEY=VALUE` -> {KEY: VALUE}."""
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise click.BadParameter(f"KEY=VALUE (a node label, e.g. isa=amx), not {item!r}", param_hint="--label")
        labels[key.strip()] = value.strip()
    return labels


@dataclass(frozen=True)
class ClusterOptions:
    """Where the cells run: `--ray-address`, `--slots`, `--label`, `--no-ray`."""

    ray_address: Optional[str]
    slots: Optional[int]
    label: Tuple[str, ...]
    no_ray: bool

    def fields(self) -> Dict[str, Any]:
        """Keywords of lowformer.sweep.config.ClusterConfig."""
        return {"ray_address": self.ray_address, "slots": self.slots, "labels": parse_labels(self.label),
                "use_ray": False if self.no_ray else None}


@dataclass(frozen=True)
class TimingOptions:
    """How long each cell is timed: `--cell-seconds`, `--rounds`, `--max-iterations`, `--threads`."""

    cell_seconds: float
    rounds: int
    max_iterations: int
    threads: Optional[int]

    def fields(self) -> Dict[str, Any]:
        return asdict(self)


@click.command("sweep")
@click.argument("models", nargs=-1, required=True)
@click.option("--formats", help="Comma-separated formats: eager, torchscript, pt2, aoti, onnx-fp32, onnx-int8, "
                                "openvino-fp32, openvino-bf16, openvino-int8, executorch-fp32, executorch-int8 "
                                "[default: every one; the INT8 ones with --calib-data].")
@click.option("--batch-sizes", default="1,16", show_default=True, help="Comma-separated images per call.")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(32, 2048))
@option_group("timing", TimingOptions,
              click.option("--cell-seconds", default=4.0, show_default=True, type=click.FloatRange(0.01),
                           help="Seconds of timed calls per cell, over all rounds (at least 3 calls)."),
              click.option("--rounds", default=8, show_default=True, type=click.IntRange(1),
                           help="Short rounds per cell."),
              click.option("--max-iterations", default=50, show_default=True, type=click.IntRange(1),
                           help="The most timed calls of a round."),
              click.option("--threads", type=click.IntRange(1), help="Threads of each timed runtime [default: "
                                                                      "the node's cores]."))
@click.option("--calib-data", type=click.Path(), help="INT8 calibration images (16 used), a folder on every node.")
@click.option("--data", type=click.Path(), help="Also validate each artifact on these images (top-1 and agreement "
                                                "with the eager model), a folder on every node.")
@click.option("--limit", type=click.IntRange(1), help="With --data: validate on this many images.")
@click.option("--cache", default="~/.cache/lowformer/sweep", show_default=True,
              help="The artifacts' folder on every node (built once, reused).")
@click.option("--out", default="benchmarks", show_default=True, type=click.Path(file_okay=False),
              help="Where results-<isa>.json and RESULTS-<isa>.md are merged into, one pair per ISA.")
@click.option("--no-peaks", is_flag=True, help="Do not measure each ISA's matmul peaks (the physical-limit section).")
@click.option("--retries", default=1, show_default=True, type=click.IntRange(0, 5),
              help="Times a failed cell runs again before it is reported.")
@option_group("cluster", ClusterOptions,
              click.option("--ray-address", metavar="ADDRESS",
                           help="A running Ray cluster (HOST:PORT of its head, ray://HOST:PORT or auto) "
                                "[default: a local Ray when Ray is installed, else this process]."),
              click.option("--slots", type=click.IntRange(1), help="CPUs of the local Ray: builds run that many at "
                                                                   "once [default: this machine's cores]."),
              click.option("--label", multiple=True, metavar="KEY=VALUE",
                           help="Run only on nodes with this Ray node label (repeatable), e.g. isa=amx."),
              click.option("--no-ray", is_flag=True, help="Run the cells in this process, one after another."))
@json_option("Print one JSON document to stdout (schema in lowformer/sweep/run.py).")
@handle_errors
def sweep_cmd(models: Tuple[str, ...], formats: Optional[str], batch_sizes: str, image_size: int,
              timing: TimingOptions, cluster: ClusterOptions, as_json: bool, **paths: Any) -> None:
    """Export, validate and time MODELS... x --formats x --batch-sizes, one Ray task per cell.

    \b
    Each node times one cell at a time (the custom resource lowformer_timing_slot, one per node);
    builds run side by side before the timing starts. A failed cell runs again once, then shows as
    n/a with its error. The cells merge into --out's results-<isa>.json and RESULTS-<isa>.md, one
    table per ISA of the nodes. Exit code 0 only when every cell was timed.
    """
    from lowformer.sweep import sweep

    no_peaks, retries = paths.pop("no_peaks"), paths.pop("retries")
    report = sweep(models=models, formats=parse_formats(formats), batch_sizes=parse_batch_sizes(batch_sizes),
                   image_size=image_size, **timing.fields(), **cluster.fields(), peaks=not no_peaks, retries=retries,
                   **paths, progress=RichProgress())
    if as_json:
        emit_json(report.to_dict())
    else:
        print_sweep(report)
    if not report.passed:
        bad = report.failed[0]
        raise LowformerError(f"{len(report.failed)} of {len(report.cells)} cell(s) failed after "
                             f"{bad.get('attempts', 1)} attempt(s): {bad['model']} {bad['format']} "
                             f"b{bad['batch_size']}: {bad['status']}")
