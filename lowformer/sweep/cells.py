"""One cell of the table, end to end on the node that runs it: its artifact built (or taken from the
cache), timed in its own worker process (lowformer.core.harness), and its result in the cell format of
`results-<isa>.json`. And the work done once per model before its cells: the table's facts of the
model, its artifacts, and (with images) their validation.

A cell's result: {"model", "format", "batch_size", "status": "ok", "n", "median_ms", "mean_ms",
"p10_ms", "p90_ms", "min_ms", "max_ms", "rounds", "round_medians_ms", "round_spread", "unsteady",
"images_per_s", "gflops", "parity", "cosine", ["warning"]} as `benchmarks/run.py` writes it, plus
what a sweep adds: "isa" and "node" (the machine that timed it), "attempts", "ran" (the attempt's start
and end, Unix seconds: the time it held its node's timing slot), and with validation
"validation" (lowformer.sweep.validation). A failed cell: "status": "failed: <one
line>" with the same additions.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from lowformer.core.errors import LowformerError, first_line
from lowformer.core.harness import JobFailed, combine, drift_note, interleaved, wall_rounds
from lowformer.sweep.config import SweepConfig
from lowformer.sweep.formats import RUNS
from lowformer.sweep.matrix import Cell
from lowformer.sweep.outcome import Outcome, Prepared

log = logging.getLogger(__name__)

EAGER_WORKER = "lowformer.sweep.workers:open_eager"
ARTIFACT_WORKER = "lowformer.bench.workers:open_artifact"


CELL_OVERHEAD_S = 6.0  # a timing worker process started and its artifact loaded, about, per cell


def estimate(cells: int, config: SweepConfig, nodes: int = 1) -> str:
    """About how long the timing of `cells` takes on `nodes` nodes (one cell per node at a time)."""
    seconds = cells * (config.cell_seconds + CELL_OVERHEAD_S) / max(nodes, 1)
    return f"about {seconds / 60:.1f} min of timing" if seconds >= 90 else f"about {seconds:.0f} s of timing"


def measure_peaks(threads: Optional[int]) -> Dict[str, Any]:
    """This node's FP32 and INT8 matmul peaks (lowformer.bench.peaks), as benchmarks/run.py measures them."""
    from lowformer.bench import int8_peak_gops, matmul_peak_gflops

    threads = threads or os.cpu_count()
    return {"fp32_gflops": matmul_peak_gflops(2048, 5, threads), "int8_gops": int8_peak_gops(1024, 5, threads)}


def timing_job(name: str, fmt: str, target: Optional[str], size: int, threads: Optional[int]):
    """The harness job of one (model, format): (key, worker, keyword arguments); `target`: the artifact's
    path (None for eager)."""
    if fmt == "eager":
        return fmt, EAGER_WORKER, dict(name=name, size=size, threads=threads)
    runtime, precision = RUNS.get(fmt, (None, None))
    return fmt, ARTIFACT_WORKER, dict(path=target, threads=threads, runtime=runtime, precision=precision,
                                      image_size=size)


def timed_cell(cell: Cell, rounds: Sequence[Dict[str, Any]], macs: Optional[int],
               artifact: Dict[str, Any]) -> Dict[str, Any]:
    """The result of a timed cell from its harness rounds (lowformer.core.harness `Samples`)."""
    stats = combine(wall_rounds(rounds))
    ips = cell.batch_size * 1000.0 / stats["mean_ms"]
    out = {**cell.head(), "status": "ok", **stats, "images_per_s": ips,
           "gflops": macs * 2 * ips / 1e9 if macs else None,
           "parity": artifact.get("parity", True), "cosine": artifact.get("cosine")}
    note = drift_note(stats)
    if note:
        out["warning"] = note
    return out


def node_name() -> str:
    """This machine's host name, as a cell records where it was timed."""
    return platform.node() or "unknown"


def prepare(model: str, config: SweepConfig, node_id: Optional[str] = None) -> Prepared:
    """Build `model`'s artifacts of the sweep's formats into the cache, count its parameters and MACs,
    and with `config.data` validate its artifacts; a failure is the result's `error` (one line)."""
    from lowformer.sweep.build import build, cache_folder, model_facts
    from lowformer.sweep.validation import validate_artifacts

    out = Prepared(model, node_id=node_id)
    try:
        out.facts = model_facts(model, config.image_size)
        folder = cache_folder(Path(os.path.expanduser(config.cache_path)), model, config.image_size)
        record = build(model, folder, config.image_size, _calib(config), [f for f in config.formats if f != "eager"])
        out.artifacts = record["artifacts"]
    except Exception as e:  # the cells say why, after their own attempts
        out.error = first_line(e, limit=200, typed=not isinstance(e, LowformerError))
        return out
    if config.data:
        try:
            out.validation = validate_artifacts(model, folder, record, config)
        except Exception as e:  # the timings stand; each cell says why it has no scores
            line = first_line(e, limit=200, typed=not isinstance(e, LowformerError))
            out.validation = {f: {"error": line} for f in config.formats}
    return out


def _calib(config: SweepConfig) -> Optional[Path]:
    return Path(os.path.expanduser(config.calib_data)) if config.calib_data else None


def time_cell(cell: Cell, config: SweepConfig, prepared: Optional[Prepared] = None) -> Dict[str, Any]:
    """Build the cell's artifact when this node's cache lacks it, then time it alone in a worker process:
    about `config.cell_seconds` of calls in `config.rounds` rounds. Raises what stops it (one line)."""
    from lowformer.sweep.build import build, cache_folder, model_facts

    size = config.image_size
    facts = prepared.facts if prepared is not None and prepared.facts else model_facts(cell.model, size)
    artifact: Dict[str, Any] = {}
    target = None
    if cell.format != "eager":
        folder = cache_folder(Path(os.path.expanduser(config.cache_path)), cell.model, size)
        artifact = build(cell.model, folder, size, _calib(config), [cell.format])["artifacts"].get(cell.format, {})
        if artifact.get("status") != "ok":
            raise LowformerError(artifact.get("status", "not built"))
        target = str(folder / artifact["path"])
    threads = config.threads or os.cpu_count()
    job = timing_job(cell.model, cell.format, target, size, threads)
    done = interleaved([job], [cell.batch_size], config.rounds, {cell.batch_size: config.cell_seconds},
                       config.max_iterations)
    value = done[cell.format]
    if isinstance(value, JobFailed):
        raise LowformerError(str(value))
    if cell.batch_size not in value:
        raise LowformerError(f"no timing at batch {cell.batch_size}")
    return timed_cell(cell, value[cell.batch_size], facts.get("macs"), artifact)


def run_cell(cell: Cell, config: SweepConfig, prepared: Optional[Prepared] = None, attempt: int = 1,
             node_id: Optional[str] = None) -> Outcome:
    """One attempt at a cell on this node: its result (a failure is a result: `status` "failed: ...")
    with the node's ISA and name, the attempt's number, and the validation done when it was prepared."""
    from lowformer.core.machine import machine_info

    start = time.time()
    try:
        result, ok = time_cell(cell, config, prepared), True
    except Exception as e:  # noqa: BLE001 - a cell that fails is a result of the table
        line = first_line(e, limit=200, typed=not isinstance(e, LowformerError))
        result, ok = {**cell.head(), "status": line if line.startswith("failed") else f"failed: {line}"}, False
        log.warning("%s attempt %d: %s", cell.key, attempt, result["status"])
    machine = machine_info()
    result.update(isa=machine["isa"], node=node_name(), attempts=attempt, ran=[round(start, 3), round(time.time(), 3)])
    if ok and prepared is not None and cell.format in prepared.validation:
        result["validation"] = prepared.validation[cell.format]
    return Outcome(result, ok, machine, node_id)


def failed_outcome(cell: Cell, line: str, attempt: int) -> Outcome:
    """A cell whose attempt gave no result at all (its worker or node died): failed, where unknown."""
    return Outcome({**cell.head(), "status": f"failed: {line}", "attempts": attempt}, False)
