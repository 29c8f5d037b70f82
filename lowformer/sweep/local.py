"""The cells in this process, one after another (no Ray): each model prepared, each cell timed in its
own worker process (lowformer.core.harness) and run again once when it fails, then this machine's peaks."""
from __future__ import annotations

import logging
from typing import Dict, List

from lowformer.core.machine import cpu_isa
from lowformer.core.progress import Progress, no_progress
from lowformer.sweep.cells import estimate, measure_peaks, prepare, run_cell
from lowformer.sweep.config import SweepConfig
from lowformer.sweep.matrix import Cell
from lowformer.sweep.outcome import Outcome, Prepared, RawRun

log = logging.getLogger(__name__)


def run_local(cells: List[Cell], config: SweepConfig, progress: Progress = no_progress) -> RawRun:
    """Prepare each model of `cells`, time each cell (retried `config.retries` times when it fails) and,
    with `config.peaks`, measure this machine's peaks."""
    models = list(dict.fromkeys(c.model for c in cells))
    log.info("%d cell(s) in this process, one after another (%s, after the builds)", len(cells),
             estimate(len(cells), config))
    prepared: Dict[str, Prepared] = {}
    with progress.task("building", total=len(models)) as task:
        for model in models:
            prepared[model] = prepare(model, config)
            task.advance(status=model)
    outcomes: List[Outcome] = []
    with progress.task("timing", total=len(cells)) as task:
        for cell in cells:
            outcome = run_cell(cell, config, prepared[cell.model])
            for attempt in range(2, config.retries + 2):
                if outcome.ok:
                    break
                log.info("%s failed (%s): running it again", cell.key, outcome.cell["status"])
                outcome = run_cell(cell, config, prepared[cell.model], attempt)
            outcomes.append(outcome)
            task.advance(status=f"{cell.key} {'ok' if outcome.ok else 'failed'}")
    peaks = {}
    if config.peaks and any(o.ok for o in outcomes):
        with progress.task("measuring this machine's matmul peaks", total=1) as task:
            peaks[cpu_isa()] = measure_peaks(config.threads)
            task.advance()
    return RawRun(prepared, outcomes, peaks, "this process", 1)
