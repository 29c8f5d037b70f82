"""FP32 ONNX -> calibrated Q/DQ INT8 ONNX (the `Exporter.int8` step and `lowformer calibrate`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from lowformer.calibrate.blocks import nodes_matching, nodes_of_blocks
from lowformer.calibrate.data import select_calibration, split_eval_and_calibration
from lowformer.calibrate.qdq import qdq_summary
from lowformer.calibrate.sensitivity import EvalData, auto_exclude_blocks
from lowformer.calibrate.session import calibrated, check_calibration_args
from lowformer.core.progress import Progress, no_progress
from lowformer.data.preprocess import Preprocessing

DEFAULT_EVAL_SIZE = 200
log = logging.getLogger(__name__)


def quantize_onnx(src: Path, dst: Path, preprocessing: Preprocessing, checkpoint: str = "unknown",
                  calib_data: Optional[str] = None, calib_size: int = 512, method: str = "percentile",
                  target: str = "cpu", exclude: Sequence[str] = (), auto_exclude: bool = False,
                  gate_top1_drop: float = 1.0, eval_data: Optional[str] = None,
                  eval_size: int = DEFAULT_EVAL_SIZE, cache_dir: Optional[Path] = None,
                  progress: Progress = no_progress, weight_bits: str = "auto") -> Dict[str, Any]:
    """Write `dst`, the calibrated Q/DQ INT8 version of the FP32 ONNX `src`; return manifest facts.

    `preprocessing`: how calibration images are fed (the manifest's); `checkpoint`: the weights' sha256
    (part of the calibration cache key). `exclude`: module-path globs (or block names such as `head`) kept in float. `auto_exclude`: keep
    blocks in float until the top-1 drop on a held-out split is <= `gate_top1_drop`, choosing the
    fastest set found (harm per ms of float cost on ONNX Runtime's CPU provider; see
    `sensitivity.auto_exclude_blocks`, whose result, with the table of candidates tried, is recorded).
    `weight_bits`: auto (cpu/openvino targets: 7 on x86 without VNNI, else 8), 7 or 8; recorded with why.
    """
    check_calibration_args(method, target, calib_data, weight_bits)
    src, dst = Path(src), Path(dst)
    eval_set = None
    if auto_exclude:
        calib, eval_set = split_eval_and_calibration(calib_data, calib_size, eval_data, eval_size)
    else:
        calib = select_calibration(calib_data, calib_size)
    with calibrated(src, calib, preprocessing, checkpoint, cache_dir, progress) as session:
        session.weight_bits = weight_bits
        excluded = nodes_matching(session.node_names, exclude)
        auto = None
        if auto_exclude:
            evaluation = EvalData.build(src, eval_set, preprocessing)
            auto = auto_exclude_blocks(session, evaluation, method, target, excluded, gate_top1_drop)
            excluded = list(dict.fromkeys(excluded + nodes_of_blocks(session.node_names, auto["kept_float"])))
        facts = session.quantize(dst, method, target, excluded)
        log.info("INT8 weights: %d-bit (%s)", facts["weight_bits"], facts["weight_bits_reason"])
        cache_hit = session.cache.hit
        cache_file = str(session.cache.path)
    summary = qdq_summary(dst)
    return {"int8": {**facts, "exclude": list(exclude), "auto_exclude": auto, "qdq": summary},
            "calibration": {**calib.facts(), "preprocessing": preprocessing.to_dict(), "cache": cache_file,
                            "cache_hit": cache_hit, "seed": 0}}
