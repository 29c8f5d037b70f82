"""The benchmark table's matrix (models x formats x batch sizes): each cell exported, optionally
validated and timed, on a Ray cluster (one timed cell per node at a time), a local Ray, or in this
process, and merged into one results-<isa>.json + RESULTS-<isa>.md per CPU ISA (`lowformer sweep`,
and the code `benchmarks/run.py` builds, times and writes its table with)."""
from lowformer.sweep.config import ClusterConfig, SweepConfig
from lowformer.sweep.matrix import Cell, matrix
from lowformer.sweep.run import SweepReport, sweep

__all__ = ["Cell", "ClusterConfig", "SweepConfig", "SweepReport", "matrix", "sweep"]

from lowformer.core.command_module import callable_as_command  # noqa: E402

callable_as_command(__name__)  # `lowformer.sweep(...)` stays the API function
