"""Calibration cache: per-tensor activation histograms as JSON, keyed by what produced them.

The key is the FP32 ONNX (sha256), the checkpoint, the calibration images (sha256 of the sorted file
list), their count and the preprocessing. Method, target and exclusions are not part of it: ranges
for any method are derived from the stored histograms, so changing those never re-runs the model.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

from lowformer.core.errors import LowformerError
from lowformer.core.files import atomic_path, ensure_dir
from lowformer.calibrate.ranges import METHODS, TensorHistogram, compute_range, rebin

SCHEMA = 2  # 2: entropy ranges without the zero spike (ranges.py); caches of 1 held the clipped ones
NUM_BINS = 1024  # per tensor, symmetric around zero: 512 per side, finer than INT8's 128 levels per side
MAX_BINS = 4096  # ORT grows histograms when later batches widen the range; merge bins past this
CACHE_DIRNAME = "calib-cache"

log = logging.getLogger(__name__)


def cache_key(onnx_sha256: str, checkpoint: str, data_sha256: str, calib_size: int,
              preprocessing: Dict[str, Any]) -> Dict[str, Any]:
    return {"schema": SCHEMA, "onnx_sha256": onnx_sha256, "checkpoint": checkpoint, "data_sha256": data_sha256,
            "calib_size": int(calib_size), "preprocessing": preprocessing, "num_bins": NUM_BINS}


def key_digest(key: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@dataclass
class CalibrationCache:
    path: Path
    key: Dict[str, Any]
    tensors: Dict[str, TensorHistogram]
    ranges: Dict[str, Dict[str, Tuple[float, float]]] = field(default_factory=dict)
    hit: bool = False  # loaded from disk (the model did not run)
    dirty: bool = False

    def ranges_for(self, method: str, names: Optional[Iterable[str]] = None) -> Dict[str, Tuple[float, float]]:
        """Per-tensor (low, high) for `method` (all tensors, or `names`), computed from the histograms
        on first use and then stored."""
        if method not in METHODS:
            raise LowformerError(f"unknown calibration method {method!r} (use {', '.join(METHODS)})")
        known = self.ranges.setdefault(method, {})
        wanted = [n for n in (self.tensors if names is None else names) if n in self.tensors]
        for name in wanted:
            if name not in known:
                known[name] = compute_range(self.tensors[name], method)
                self.dirty = True
        return {n: known[n] for n in wanted}

    def save(self) -> None:
        data = {"key": self.key, "digest": key_digest(self.key),
                "tensors": {n: h.to_json() for n, h in self.tensors.items()},
                "ranges": {m: {n: list(r) for n, r in rs.items()} for m, rs in self.ranges.items()}}
        with atomic_path(self.path) as tmp:  # compact: histograms make indented JSON slow and large
            tmp.write_text(json.dumps(data, separators=(",", ":")))
        self.dirty = False

    def save_if_dirty(self) -> None:
        if self.dirty:
            self.save()


def cache_path(cache_dir: Path, key: Dict[str, Any]) -> Path:
    return Path(cache_dir) / f"calib-{key_digest(key)[:20]}.json"


def load_cache(path: Path, key: Dict[str, Any]) -> Optional[CalibrationCache]:
    """The cache at `path` if it exists, parses and was made for exactly `key`; else None."""
    try:
        data = json.loads(Path(path).read_text())
        if data.get("key") != key:
            return None
        tensors = {n: TensorHistogram.from_json(d) for n, d in data["tensors"].items()}
        ranges = {m: {n: (float(r[0]), float(r[1])) for n, r in rs.items()} for m, rs in data.get("ranges", {}).items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: calibrate again
    return CalibrationCache(Path(path), key, tensors, ranges, hit=True)


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """ORT's quantization tools print progress to stdout and warn via logging: keep stdout for --json."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def collect_histograms(model_path: Path, readers, total: int,
                       progress: Optional[Callable[[int], None]] = None) -> Dict[str, TensorHistogram]:
    """Run the model on every batch (ORT's histogram calibrator over all float tensors)."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory(prefix="lowformer-calib-") as tmp, quiet_ort():
        calibrator = create_calibrator(
            Path(model_path), op_types_to_calibrate=None,
            augmented_model_path=str(Path(tmp) / "augmented_model.onnx"),
            calibrate_method=CalibrationMethod.Entropy,
            extra_options={"num_bins": NUM_BINS, "symmetric": False})
        # One batch per collect_data call: the histogram calibrator keeps all outputs of a call in memory.
        for reader in readers:
            calibrator.collect_data(reader)
            if progress:
                progress(1)
        histograms = calibrator.collector.histogram_dict
        return {name: rebin(TensorHistogram.from_collector(entry), MAX_BINS) for name, entry in histograms.items()}


def open_cache(cache_dir: Path, key: Dict[str, Any], collect: Callable[[], Dict[str, TensorHistogram]],
) -> CalibrationCache:
    """The cached histograms for `key`, or collect them (running the model) and store them."""
    path = cache_path(cache_dir, key)
    cache = load_cache(path, key)
    if cache is not None:
        log.info("calibration cache hit: %s (the model does not run again)", path)
        return cache
    tensors = collect()  # first: a failed or interrupted run leaves no empty cache folder behind
    ensure_dir(cache_dir)
    cache = CalibrationCache(path, key, tensors)
    cache.save()
    log.info("calibration cache written: %s", path)
    return cache
