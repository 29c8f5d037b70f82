"""What the runners hand back: a model made ready (`Prepared`), one attempt at a cell (`Outcome`), and a
whole run (`RawRun`). Plain dataclasses: Ray carries them between the nodes and the driver."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class Outcome:
    """What one attempt at a cell gives back: the cell's result (`cell`), whether it is `ok`, and the
    node it ran on (`machine`: lowformer.core.machine.machine_info there; `node_id`: Ray's, or None)."""

    cell: Dict[str, Any]
    ok: bool
    machine: Dict[str, Any] = field(default_factory=dict)
    node_id: Optional[str] = None


@dataclass
class Prepared:
    """A model made ready on a node before its cells: `facts` (display, family, params, macs; None when
    the model could not be built), `artifacts` (format -> its build record entry), `validation` (format
    -> its scores), `error` (one line, or None), `node_id` (the Ray node that built it, or None)."""

    model: str
    facts: Optional[Dict[str, Any]] = None
    artifacts: Dict[str, Any] = field(default_factory=dict)
    validation: Dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None
    node_id: Optional[str] = None


@dataclass
class RawRun:
    """What a runner gives back: each model's `prepared`, each timed cell's final `outcomes` (after its
    retries), `peaks` per ISA (lowformer.core.machine.cpu_isa -> {"fp32_gflops", "int8_gops"}; absent when
    not measured), `where` the cells ran (one phrase) and on how many `nodes`."""

    prepared: Dict[str, Prepared]
    outcomes: List[Outcome]
    peaks: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    where: str = "this process"
    nodes: int = 1
