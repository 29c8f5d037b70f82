"""A calibration session: the prepared FP32 ONNX and its activation histograms (cached), ready to be
quantized any number of times with any range method, target and exclusion list."""
from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

from lowformer.calibrate.cache import CACHE_DIRNAME, CalibrationCache, cache_key, collect_histograms, open_cache
from lowformer.calibrate.data import BatchReader, ImageSet
from lowformer.calibrate.qdq import prepare_model, quantize_with_ranges, target_config
from lowformer.calibrate.ranges import METHODS
from lowformer.core.errors import LowformerError
from lowformer.core.progress import Progress, no_progress
from lowformer.data.imagenet import load_images
from lowformer.data.preprocess import Preprocessing
from lowformer.models.checkpoints import sha256_file

log = logging.getLogger(__name__)
CALIB_BATCH = 8


def model_input(path: Path):
    """(input name, fixed batch size or None) of an ONNX model."""
    import onnx

    inp = onnx.load(str(path), load_external_data=False).graph.input[0]
    dim0 = inp.type.tensor_type.shape.dim[0]
    return inp.name, (dim0.dim_value if dim0.HasField("dim_value") and dim0.dim_value > 0 else None)


@dataclass
class CalibratedModel:
    """A calibrated model ready to be quantized any number of times (never re-calibrated)."""

    prepared: Path  # the FP32 ONNX with Constant nodes turned into initializers
    node_names: List[str]
    cache: CalibrationCache
    calib: ImageSet
    preprocessing: Preprocessing
    graph_io: List[tuple]  # (op_type, inputs, outputs) of every node
    weight_bits: str = "auto"  # every quantization of this session: auto, 7 or 8 (qdq.resolve_weight_bits)
    source: Optional[Path] = None  # the FP32 ONNX it was prepared from

    def tensors_for(self, target: str) -> List[str]:
        """Activations the target's op types can quantize: the only ranges ORT needs."""
        ops = set(target_config(target).op_types)
        return list(dict.fromkeys(t for op, ins, outs in self.graph_io if op in ops for t in (*ins, *outs) if t))

    def quantize(self, dst: Path, method: str, target: str, nodes_to_exclude: Sequence[str] = (),
                 prepared: Optional[Path] = None) -> Dict[str, Any]:
        """`prepared`: the same graph with other weights (distilled) quantized with these ranges."""
        ranges = self.cache.ranges_for(method, self.tensors_for(target))
        self.cache.save_if_dirty()
        return quantize_with_ranges(prepared or self.prepared, dst, ranges, method, target, nodes_to_exclude,
                                    weight_bits=self.weight_bits)


def check_calibration_args(method: str, target: str, calib_data: Optional[str], weight_bits: str = "auto") -> None:
    if not calib_data:
        raise LowformerError("INT8 needs calibration images (calib_data)")
    if method not in METHODS:
        raise LowformerError(f"unknown calibration method {method!r} (use {', '.join(METHODS)})")
    target_config(target, weight_bits)


@contextlib.contextmanager
def calibrated(src: Path, calib: ImageSet, preprocessing: Preprocessing, checkpoint: str,
               cache_dir: Optional[Path] = None, progress: Progress = no_progress) -> Iterator[CalibratedModel]:
    """Prepare `src` and load (or collect, running the model once) its calibration histograms."""
    import onnx

    src = Path(src)
    key = cache_key(sha256_file(src), checkpoint, calib.sha256, len(calib), preprocessing.to_dict())
    with tempfile.TemporaryDirectory(prefix="lowformer-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        prepare_model(src, prepared)
        nodes = onnx.load(str(prepared), load_external_data=False).graph.node
        names = [n.name for n in nodes]
        graph_io = [(n.op_type, tuple(n.input), tuple(n.output)) for n in nodes]

        def collect():
            name, fixed = model_input(prepared)
            log.info("calibrating on %d images from %s ...", len(calib), calib.folder)
            reader = BatchReader(load_images(calib.samples, preprocessing), name, CALIB_BATCH, fixed)
            with progress.task("calibrating", total=len(reader)) as task:
                return collect_histograms(prepared, reader.one_batch_readers(), len(reader), task.advance)

        cache = open_cache(Path(cache_dir) if cache_dir else src.parent / CACHE_DIRNAME, key, collect)
        yield CalibratedModel(prepared, names, cache, calib, preprocessing, graph_io, source=src)
