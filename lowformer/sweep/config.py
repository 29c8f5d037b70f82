"""`SweepConfig`: the matrix a sweep times and how (lowformer.core.config), and `ClusterConfig`: where
its cells run (a Ray cluster, a local Ray, or this process)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

from lowformer.core.config import Config
from lowformer.core.errors import LowformerError
from lowformer.sweep.formats import CALIBRATED, FORMATS

DEFAULT_CACHE = "~/.cache/lowformer/sweep"


@dataclass(frozen=True)
class ClusterConfig(Config):
    """Where the cells run. `ray_address`: a running Ray cluster (`HOST:PORT` of its head, `ray://HOST:PORT`,
    or `auto`); None: a local Ray on this machine when Ray is installed, else this process. `use_ray`:
    False runs the cells in this process one after another even with Ray installed; True requires Ray;
    None: Ray when it is installed. `slots`: CPUs of the local Ray (build work runs that many at once;
    None: this machine's cores). `labels`: node labels a cell's node must have (`{"isa": "amx"}`): every
    task of the sweep runs only on such nodes."""

    ray_address: Optional[str] = None
    use_ray: Optional[bool] = None
    slots: Optional[int] = None
    labels: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", dict(self.labels or {}))


@dataclass(frozen=True)
class SweepConfig(Config):
    """A sweep's matrix and timing. `models`: model names (b1, timm:<name>); `formats`: of
    lowformer.sweep.formats.FORMATS (empty: every one, the INT8 ones only with `calib_data`);
    `batch_sizes`: images per call; `image_size`: square input; `cell_seconds`: about that many seconds
    of timed calls per cell over all `rounds` (at least 3 calls, at most `max_iterations` per round, after
    a warm-up call); `threads`: per timed runtime (None: the node's cores); `calib_data`: INT8 calibration
    images (16 are used; a path on every node); `data`: also validate each artifact on these images (top-1
    and agreement with the eager model), `limit` of them (None: all); `cache`: the artifacts' folder on
    every node; `out`: where results-<isa>.json and RESULTS-<isa>.md are merged into; `peaks`: measure each
    node's FP32/INT8 matmul peaks (the table's physical-limit section); `retries`: times a failed cell is
    run again before it is reported; `cluster`: where the cells run (ClusterConfig)."""

    models: Tuple[str, ...] = ()
    formats: Tuple[str, ...] = ()
    batch_sizes: Tuple[int, ...] = (1, 16)
    image_size: int = 224
    cell_seconds: float = 4.0
    rounds: int = 8
    max_iterations: int = 50
    threads: Optional[int] = None
    calib_data: Optional[str] = None
    data: Optional[str] = None
    limit: Optional[int] = None
    cache: str = DEFAULT_CACHE
    out: str = "benchmarks"
    peaks: bool = True
    retries: int = 1
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        formats = tuple(self.formats) or tuple(f for f in FORMATS if self.calib_data or f not in CALIBRATED)
        object.__setattr__(self, "formats", formats)
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in self.batch_sizes))

    def checked(self) -> "SweepConfig":
        """Itself, or one LowformerError naming what is wrong (before any work)."""
        if not self.models:
            raise LowformerError("give at least one model (b1, timm:<name>)")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise LowformerError(f"unknown format {unknown[0]!r} (one of {', '.join(FORMATS)})")
        calibrated = [f for f in self.formats if f in CALIBRATED]
        if calibrated and not self.calib_data:
            raise LowformerError(f"{calibrated[0]} needs INT8 calibration images: give calib_data (a folder of images)")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise LowformerError("batch sizes must be whole numbers of at least 1")
        if self.image_size < 32 or self.cell_seconds <= 0 or self.rounds < 1 or self.max_iterations < 1:
            raise LowformerError("image_size must be at least 32; cell_seconds, rounds and max_iterations above 0")
        if self.retries < 0 or (self.cluster.slots is not None and self.cluster.slots < 1):
            raise LowformerError("retries must be 0 or more and slots at least 1")
        if self.cluster.ray_address is None:  # paths on this machine: check them now
            for what, path in (("calib_data", self.calib_data), ("data", self.data)):
                if path and not Path(path).is_dir():
                    raise LowformerError(f"{what} {path} is not a folder")
        return self

    @property
    def cache_path(self) -> str:
        """The cache as every node reads it: `~` expanded there, a relative path made absolute here."""
        return self.cache if self.cache.startswith("~") else os.path.abspath(self.cache)
