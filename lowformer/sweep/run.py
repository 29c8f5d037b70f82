"""`sweep`: export, (optionally) validate and time a models x formats x batch sizes matrix, as Ray tasks
on a Ray cluster, on a local Ray, or in this process, and merge the cells into the benchmark table of
each ISA the nodes have (lowformer.sweep.table).

JSON (`SweepReport.to_dict`, `lowformer sweep --json`), schema 1:
  {"schema": 1, "where": "<where the cells ran>", "nodes": <nodes that could time>, "passed": bool,
   "failed": <failed cells>, "files": [results-<isa>.json written], "cells": [cell (lowformer.sweep.cells),
   in matrix order]}
"""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from lowformer.core.errors import LowformerError
from lowformer.core.machine import machine_info
from lowformer.core.progress import Progress, no_progress
from lowformer.sweep.config import ClusterConfig, SweepConfig
from lowformer.sweep.formats import CALIBRATED, int8_note, standard_notes
from lowformer.sweep.matrix import Cell, matrix
from lowformer.sweep.outcome import Outcome, RawRun
from lowformer.sweep.table import check_mergeable, merge, read_results, results_name, write_results

log = logging.getLogger(__name__)

COMMAND = "lowformer sweep"


@dataclass
class SweepReport:
    """A finished sweep: every cell of the matrix (`cells`, in matrix order), the results files it merged
    into (`files`), where the cells ran (`where`) and on how many nodes (`nodes`)."""

    cells: List[Dict[str, Any]]
    files: List[str] = field(default_factory=list)
    where: str = "this process"
    nodes: int = 1

    @property
    def failed(self) -> List[Dict[str, Any]]:
        """The cells that failed (after their retries)."""
        return [c for c in self.cells if str(c.get("status", "")).startswith("failed")]

    @property
    def passed(self) -> bool:
        return not self.failed

    def to_dict(self) -> Dict[str, Any]:
        return {"schema": 1, "where": self.where, "nodes": self.nodes, "passed": self.passed,
                "failed": len(self.failed), "files": self.files, "cells": self.cells}


def choose_runner(cluster: ClusterConfig) -> Callable[..., RawRun]:
    """run_ray with an address or with Ray installed (unless `use_ray` is False), else run_local."""
    from lowformer.sweep.ray_runner import import_ray, ray_available, run_ray

    if cluster.use_ray is False:
        if cluster.ray_address:
            raise LowformerError("a Ray address and running without Ray exclude each other")
        from lowformer.sweep.local import run_local

        return run_local
    if cluster.ray_address or cluster.use_ray:
        import_ray()  # one line with the install command when it is missing
        return run_ray
    if ray_available():
        return run_ray
    from lowformer.sweep.local import run_local

    return run_local


def sweep(config: Optional[SweepConfig] = None, progress: Progress = no_progress, **fields: Any) -> SweepReport:
    """Time every cell of `config.models` x `config.formats` x `config.batch_sizes` and merge them into
    `config.out`'s results-<isa>.json and RESULTS-<isa>.md, one pair per ISA of the nodes that timed them.

    `config`: a SweepConfig (lowformer.sweep.config), or its fields as keywords (models, formats,
    batch_sizes, image_size, cell_seconds, rounds, max_iterations, threads, calib_data, data, limit,
    cache, out, peaks, retries, and the cluster's ray_address, use_ray, slots, labels). Nothing is
    written unless every cell has a result (timed, or failed after its retries): a cluster that cannot
    be reached, or a label no node has, is one LowformerError before any work."""
    config = SweepConfig.build(config, **fields).checked()
    out = Path(config.out)
    check_mergeable(out, config.image_size)
    cells = matrix(config.models, config.formats, config.batch_sizes)
    runner = choose_runner(config.cluster)
    raw = runner([c for c in cells if c.timed], config, progress)
    groups = assemble(raw, cells, config)
    files = [str(write_results(merge(read_results(out / results_name(isa)), results), out))
             for isa, results in groups.items()]
    by_key = {k: c for results in groups.values() for k, c in results["cells"].items()}
    return SweepReport([by_key[c.key] for c in cells if c.key in by_key], files, raw.where, raw.nodes)


def _machine_of(isa: str, outcomes: List[Outcome], local: Dict[str, Any]) -> Dict[str, Any]:
    """The machine facts an ISA's table shows: of the node that timed its first cell."""
    mine = [o for o in outcomes if o.cell.get("isa") == isa and o.machine]
    best = next((o for o in mine if o.ok), mine[0] if mine else None)
    return best.machine if best is not None else local


def assemble(raw: RawRun, cells: List[Cell], config: SweepConfig) -> Dict[str, Dict[str, Any]]:
    """One results document (lowformer.sweep.table) per ISA of the outcomes: its cells, models, machine,
    settings, notes and peaks. A cell whose node is unknown (its worker died) goes with this machine's ISA;
    a cell n/a by design with each ISA that has its model's other cells."""
    local = machine_info()
    cells_of: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for o in raw.outcomes:
        cells_of.setdefault(o.cell.get("isa") or local["isa"], {})[_key(o.cell)] = o.cell
    for cell in (c for c in cells if not c.timed):
        homes = [isa for isa, got in cells_of.items() if any(v["model"] == cell.model for v in got.values())]
        for isa in homes or [local["isa"]]:
            cells_of.setdefault(isa, {})[cell.key] = cell.not_timed()
    today = _dt.date.today().isoformat()
    groups = {}
    for isa, got in cells_of.items():
        machine = _machine_of(isa, raw.outcomes, local)
        notes = standard_notes(isa) + [f"Timed by `{COMMAND}` on {raw.where} ({raw.nodes} node(s) able to time): "
                                       "each cell alone on its node, a failed cell run again once and then "
                                       "reported n/a with its error."]
        if any(c.format in CALIBRATED for c in cells) and isa == local["isa"]:
            notes.append(int8_note(isa))
        models = {m: {**_facts(raw, m), "artifacts": raw.prepared[m].artifacts if m in raw.prepared else {}}
                  for m in dict.fromkeys(v["model"] for v in got.values())}
        groups[isa] = {"schema": 1, "models": models, "cells": got, "machine": machine, "date": today,
                       "notes": notes, "peaks": raw.peaks.get(isa, {}),
                       "settings": {"command": COMMAND, "per_cell": True, "image_size": config.image_size,
                                    "threads": config.threads or machine.get("cores"),
                                    "cell_seconds": config.cell_seconds, "rounds": config.rounds,
                                    "max_iterations": config.max_iterations, "batch_sizes": list(config.batch_sizes)}}
    return groups


def _key(cell: Dict[str, Any]) -> str:
    return Cell(cell["model"], cell["format"], cell["batch_size"]).key


def _facts(raw: RawRun, model: str) -> Dict[str, Any]:
    """The table's facts of a model, or its name alone when it could not be built."""
    prepared = raw.prepared.get(model)
    if prepared is not None and prepared.facts:
        return dict(prepared.facts)
    return {"display": model, "family": None, "params": None, "macs": None}
