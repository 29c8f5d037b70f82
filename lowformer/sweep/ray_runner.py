"""The cells as Ray tasks on a Ray cluster (`ray_address`), or on a local Ray started here.

Ray schedules everything; this module only says what each task needs:
  - one build task per model (1 CPU): its artifacts into the node's cache, its parameters and MACs,
    with images its validation. Build tasks run side by side, as many as the nodes have CPUs.
  - one timing task per cell, once every build has finished (so no build of this sweep shares a CPU
    with a timing): 1 CPU and 1 unit of the custom resource TIMING_SLOT, which each node advertises
    once, so that a node times one cell at a time. Any node with a free slot takes it; one that lacks
    the model's artifacts builds them first (into its cache), outside the timed calls. A cell that fails (its code, its worker or its node) is
    submitted again as a new task, `retries` times, then reported with its error line.
  - one peaks task per ISA, on the node whose machine facts the ISA's table shows (1 TIMING_SLOT).
Every task carries the label selector of `labels` (node labels, Ray >= 2.49): it runs only on nodes
with those labels. Before submitting, the cluster is checked: a node with TIMING_SLOT and the labels
must exist (else one line now, rather than tasks that wait forever).
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any, Dict, Iterator, List, Optional, Tuple

from lowformer.core.errors import LowformerError, first_line
from lowformer.core.progress import Progress, no_progress
from lowformer.sweep.cells import estimate, failed_outcome, measure_peaks, prepare, run_cell
from lowformer.sweep.config import ClusterConfig, SweepConfig
from lowformer.sweep.matrix import Cell
from lowformer.sweep.outcome import Outcome, Prepared, RawRun

log = logging.getLogger(__name__)

TIMING_SLOT = "lowformer_timing_slot"  # the custom resource: one per node, one per timed task
INSTALL = "pip install 'lowformer[ray]'"
PROBE_TIMEOUT_S = 5.0
WAIT_S = 5.0  # how often the driver looks at the running tasks (for the progress line)


def import_ray():
    """The `ray` module, or one LowformerError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise LowformerError(f"Ray is not installed: {INSTALL} (or run without a Ray address: the cells then "
                             "run in this process)") from None
    return ray


def ray_available() -> bool:
    """Whether Ray can be imported here."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def node_labels() -> Dict[str, str]:
    """The labels a local Ray gives this machine: `isa` (lowformer.core.machine.slug of cpu_isa())."""
    from lowformer.core.machine import cpu_isa, slug

    return {"isa": slug(cpu_isa())}


def start_local(slots: Optional[int] = None):
    """Start a Ray on this machine: `slots` CPUs (None: its cores), one TIMING_SLOT, the labels of
    node_labels(). Returns the ray module."""
    ray = import_ray()
    ray.init(num_cpus=slots or os.cpu_count() or 1, resources={TIMING_SLOT: 1}, labels=node_labels(),
             include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray


def _host_port(address: str) -> Optional[Tuple[str, int]]:
    """(host, port) of `HOST:PORT` or `ray://HOST:PORT`; None for `auto` / `local` (Ray finds them)."""
    if address in ("auto", "local"):
        return None
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LowformerError(f"cannot reach the Ray cluster at {address}: not HOST:PORT (e.g. 10.0.0.5:6379)")
    return host.strip("[]"), int(port)


def probe(address: str) -> None:
    """One TCP connection to the cluster's head, so that an unreachable address is one line at once
    (Ray itself retries for minutes)."""
    where = _host_port(address)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        reason = (f"no answer in {PROBE_TIMEOUT_S:g} s" if isinstance(e, socket.timeout)
                  else e.strerror or first_line(e))
        raise LowformerError(f"cannot reach the Ray cluster at {address}: {reason}") from None


@contextlib.contextmanager
def connected(cluster: ClusterConfig) -> Iterator[str]:
    """Connect to the cluster (`ray_address`), or start a local Ray (`slots`); yields where the cells run
    (one phrase). A process already connected to Ray (ray.init called by the program) keeps its
    connection. Disconnects (and stops the local Ray) at the end."""
    ray = import_ray()
    address = cluster.ray_address
    if address:
        probe(address)
    owned = not ray.is_initialized()
    if not owned:
        where = "the Ray this program started"
    elif address:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
            raise LowformerError(f"cannot reach the Ray cluster at {address}: {first_line(e, limit=200)}") from None
        where = f"the Ray cluster at {address}"
    else:
        start_local(cluster.slots)
        where = f"a local Ray with {cluster.slots or os.cpu_count()} slot(s)"
    try:
        yield where
    finally:
        if owned:
            ray.shutdown()


def feasible_nodes(labels: Dict[str, str]) -> List[Dict[str, Any]]:
    """The live nodes that can time a cell: TIMING_SLOT and every label of `labels`; one LowformerError
    when there are none (the tasks would wait forever)."""
    ray = import_ray()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    slotted = [n for n in nodes if (n.get("Resources") or {}).get(TIMING_SLOT, 0) >= 1]
    if not slotted:
        raise LowformerError(f"no node of the Ray cluster has the {TIMING_SLOT} resource: start each node with "
                             f"ray start ... --resources='{{\"{TIMING_SLOT}\": 1}}'")
    match = [n for n in slotted if all((n.get("Labels") or {}).get(k) == v for k, v in labels.items())]
    if not match:
        seen = sorted({f"{k}={v}" for n in slotted for k, v in (n.get("Labels") or {}).items()
                       if not k.startswith("ray.io/")})
        want = ",".join(f"{k}={v}" for k, v in labels.items())
        raise LowformerError(f"no node of the Ray cluster has the label(s) {want} (its nodes' labels: "
                             f"{', '.join(seen) or 'none'})")
    return match


# --------------------------------------------------------------------------- the tasks (run on the nodes)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _prepare_task(model: str, config: SweepConfig) -> Prepared:
    return prepare(model, config, _node_id())


def _cell_task(cell: Cell, config: SweepConfig, prepared: Prepared, attempt: int) -> Outcome:
    threads = str(config.threads or os.cpu_count() or 1)
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)  # Ray sets 1 (the task's CPUs)
    try:  # for the timing worker processes
        return run_cell(cell, config, prepared, attempt, _node_id())
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _peaks_task(threads: Optional[int]) -> Dict[str, Any]:
    return measure_peaks(threads)


# --------------------------------------------------------------------------- the driver


class _Driver:
    """Submits the tasks of one sweep and collects their results (Ray schedules them)."""

    def __init__(self, config: SweepConfig, progress: Progress):
        ray = import_ray()
        self.ray, self.config, self.progress = ray, config, progress
        self.labels = dict(config.cluster.labels)
        self.prepare = ray.remote(max_retries=0)(_prepare_task)
        self.cell = ray.remote(max_retries=0)(_cell_task)
        self.peaks = ray.remote(max_retries=0)(_peaks_task)

    def _options(self, timed: bool, node_id: Optional[str] = None, soft: bool = True) -> Dict[str, Any]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options: Dict[str, Any] = {"num_cpus": 1}
        if timed:
            options["resources"] = {TIMING_SLOT: 1}
        if self.labels:
            options["label_selector"] = dict(self.labels)
        if node_id:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=soft)
        return options

    def build(self, models: List[str]) -> Dict[str, Prepared]:
        # spread over the nodes: each builds into its own cache what its cells then find there
        refs = {self.prepare.options(**self._options(False), scheduling_strategy="SPREAD").remote(m, self.config): m
                for m in models}
        prepared: Dict[str, Prepared] = {}
        with self.progress.task("building", total=len(models)) as task:
            for ref, model in self._as_done(refs):
                try:
                    prepared[model] = self.ray.get(ref)
                except Exception as e:  # noqa: BLE001 - its worker or node died: the cells try again
                    prepared[model] = Prepared(model, error=_ray_error(e))
                task.advance(status=model)
        return prepared

    def time(self, cells: List[Cell], prepared: Dict[str, Prepared]) -> List[Outcome]:
        def submit(cell: Cell, attempt: int):
            # no node affinity: a node with a free timing slot takes the cell (a soft affinity would wait for
            # the busy build node); a node without the model's artifacts builds them first (its own cache)
            return self.cell.options(**self._options(True)).remote(cell, self.config, prepared[cell.model], attempt)

        pending = {submit(c, 1): (c, 1) for c in cells}
        done: Dict[Cell, Outcome] = {}
        with self.progress.task("timing", total=len(cells)) as task:
            while pending:
                ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                for ref in ready:
                    cell, attempt = pending.pop(ref)
                    try:
                        outcome = self.ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - its worker or node died
                        outcome = failed_outcome(cell, _ray_error(e), attempt)
                    if not outcome.ok and attempt <= self.config.retries:
                        log.info("%s failed (%s): running it again", cell.key, outcome.cell["status"])
                        pending[submit(cell, attempt + 1)] = (cell, attempt + 1)
                        continue
                    done[cell] = outcome
                    task.advance(status=f"{cell.key} {'ok' if outcome.ok else 'failed'}")
        return [done[c] for c in cells]

    def measure_peaks(self, outcomes: List[Outcome]) -> Dict[str, Dict[str, Any]]:
        """Per ISA, the peaks of the node that timed its first cell."""
        first: Dict[str, str] = {}
        for o in outcomes:
            if o.ok and o.node_id:
                first.setdefault(o.cell["isa"], o.node_id)
        refs = {self.peaks.options(**self._options(True, node, soft=False)).remote(self.config.threads): isa
                for isa, node in first.items()}
        peaks: Dict[str, Dict[str, Any]] = {}
        with self.progress.task("measuring each ISA's matmul peaks", total=len(refs)) as task:
            for ref, isa in self._as_done(refs):
                try:
                    peaks[isa] = self.ray.get(ref)
                except Exception as e:  # noqa: BLE001 - the table says they were not measured
                    log.warning("matmul peaks of %s not measured: %s", isa, _ray_error(e))
                task.advance()
        return peaks

    def _as_done(self, refs: Dict[Any, Any]) -> Iterator[Tuple[Any, Any]]:
        pending = list(refs)
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1, timeout=None)
            for ref in ready:
                yield ref, refs[ref]


def _ray_error(e: BaseException) -> str:
    """One line of a Ray error: the task's own exception when there is one."""
    cause = getattr(e, "cause", None)
    err = cause if isinstance(cause, BaseException) else e
    return first_line(err, limit=200, typed=not isinstance(err, LowformerError))


def run_ray(cells: List[Cell], config: SweepConfig, progress: Progress = no_progress) -> RawRun:
    """The sweep's tasks on the cluster of `config.cluster` (or a local Ray): builds, then timed cells,
    then each ISA's peaks (with `config.peaks`)."""
    with connected(config.cluster) as where:
        nodes = feasible_nodes(config.cluster.labels)
        log.info("%d cell(s) on %s: %d node(s) can time them, one cell at a time each (%s, after the builds)",
                 len(cells), where, len(nodes), estimate(len(cells), config, len(nodes)))
        driver = _Driver(config, progress)
        prepared = driver.build(list(dict.fromkeys(c.model for c in cells)))
        outcomes = driver.time(cells, prepared)
        peaks = driver.measure_peaks(outcomes) if config.peaks else {}
    return RawRun(prepared, outcomes, peaks, where, len(nodes))
