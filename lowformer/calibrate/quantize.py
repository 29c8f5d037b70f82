"""FP32 ONNX -> calibrated Q/DQ INT8 ONNX (the `Exporter.int8` step and `lowformer calibrate`)."""
from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from lowformer.models.checkpoints import sha256_file
from lowformer.data.imagenet import load_images
from lowformer.core.errors import LowformerError
from lowformer.data.preprocess import Preprocessing
from lowformer.calibrate.blocks import nodes_matching, nodes_of_blocks
from lowformer.calibrate.cache import CACHE_DIRNAME, CalibrationCache, cache_key, collect_histograms, open_cache
from lowformer.calibrate.data import BatchReader, ImageSet, select_calibration, split_eval_and_calibration
from lowformer.calibrate.qdq import prepare_model, qdq_summary, quantize_with_ranges, target_config
from lowformer.calibrate.ranges import METHODS

Log = Callable[[str], None]
DEFAULT_EVAL_SIZE = 200
CALIB_BATCH = 8


def preprocessing_for(spec: Any, image_size: int, manifest: Optional[Dict[str, Any]]) -> Preprocessing:
    """The validation preprocessing recorded in the manifest, else the model's own protocol."""
    if manifest and manifest.get("preprocessing"):
        return Preprocessing.from_dict(manifest["preprocessing"])
    if spec is None:
        raise LowformerError("no preprocessing known: give the model spec or a manifest")
    return spec.preprocessing(image_size)


def checkpoint_id(manifest: Optional[Dict[str, Any]]) -> str:
    ck = (manifest or {}).get("checkpoint") or {}
    return str(ck.get("sha256") or "unknown")


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

    def tensors_for(self, target: str) -> List[str]:
        """Activations the target's op types can quantize: the only ranges ORT needs."""
        ops = set(target_config(target).op_types)
        return list(dict.fromkeys(t for op, ins, outs in self.graph_io if op in ops for t in (*ins, *outs) if t))

    def quantize(self, dst: Path, method: str, target: str, nodes_to_exclude: Sequence[str] = ()) -> Dict[str, Any]:
        ranges = self.cache.ranges_for(method, self.tensors_for(target))
        self.cache.save_if_dirty()
        return quantize_with_ranges(self.prepared, dst, ranges, method, target, nodes_to_exclude)


def _check_args(method: str, target: str, calib_data: Optional[str]) -> None:
    if not calib_data:
        raise LowformerError("INT8 needs calibration images: pass --calib-data DIR")
    if method not in METHODS:
        raise LowformerError(f"unknown calibration method {method!r} (use {', '.join(METHODS)})")
    target_config(target)


@contextlib.contextmanager
def calibrated(src: Path, calib: ImageSet, preprocessing: Preprocessing, checkpoint: str,
               cache_dir: Optional[Path] = None, log: Log = lambda s: None) -> Iterator[CalibratedModel]:
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
            log(f"calibrating on {len(calib)} images from {calib.folder} ...")
            reader = BatchReader(load_images(calib.samples, preprocessing, log), name, CALIB_BATCH, fixed)
            with progress_bar(len(reader), "calibrating") as advance:
                return collect_histograms(prepared, reader.one_batch_readers(), len(reader), log, advance)

        cache = open_cache(Path(cache_dir) if cache_dir else src.parent / CACHE_DIRNAME, key, collect, log)
        yield CalibratedModel(prepared, names, cache, calib, preprocessing, graph_io)


@contextlib.contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar on stderr (nothing when stderr is not a terminal)."""
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def quantize_onnx(src: Path, dst: Path, spec: Any = None, image_size: int = 224,
                  manifest: Optional[Dict[str, Any]] = None, log: Log = lambda s: None,
                  calib_data: Optional[str] = None, calib_size: int = 512, method: str = "percentile",
                  target: str = "cpu", exclude: Sequence[str] = (), auto_exclude: bool = False,
                  gate_top1_drop: float = 1.0, eval_data: Optional[str] = None,
                  eval_size: int = DEFAULT_EVAL_SIZE, cache_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Write `dst`, the calibrated Q/DQ INT8 version of the FP32 ONNX `src`; return manifest facts.

    `exclude`: module-path globs (or block names such as `head`) kept in float. `auto_exclude`: keep
    the most harmful blocks in float until the top-1 drop on a held-out split is <= `gate_top1_drop`.
    """
    _check_args(method, target, calib_data)
    src, dst = Path(src), Path(dst)
    preprocessing = preprocessing_for(spec, image_size, manifest)
    eval_set = None
    if auto_exclude:
        calib, eval_set = split_eval_and_calibration(calib_data, calib_size, eval_data, eval_size, log)
    else:
        calib = select_calibration(calib_data, calib_size, log=log)
    with calibrated(src, calib, preprocessing, checkpoint_id(manifest), cache_dir, log) as session:
        excluded = nodes_matching(session.node_names, exclude)
        auto = None
        if auto_exclude:
            from lowformer.calibrate.sensitivity import EvalData, auto_exclude_blocks

            evaluation = EvalData.build(src, eval_set, preprocessing, log)
            auto = auto_exclude_blocks(session, evaluation, method, target, excluded, gate_top1_drop, log)
            excluded = list(dict.fromkeys(excluded + nodes_of_blocks(session.node_names, auto["kept_float"])))
        facts = session.quantize(dst, method, target, excluded)
        cache_hit = session.cache.hit
        cache_file = str(session.cache.path)
    summary = qdq_summary(dst)
    return {"int8": {**facts, "exclude": list(exclude), "auto_exclude": auto, "qdq": summary},
            "calibration": {**calib.facts(), "preprocessing": preprocessing.to_dict(), "cache": cache_file,
                            "cache_hit": cache_hit, "seed": 0}}
