"""FP32 ONNX -> calibrated Q/DQ INT8 ONNX (the `Exporter.int8` step and `lowformer calibrate`)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

from lowformer.core.blocks import nodes_matching, nodes_of_blocks
from lowformer.calibrate.config import DEFAULT_EVAL_SIZE, CalibrationConfig
from lowformer.calibrate.cache import CACHE_DIRNAME
from lowformer.calibrate.data import select_calibration, split_eval_and_calibration
from lowformer.calibrate.distill import DistillationFailed
from lowformer.calibrate.qat import distill_qdq
from lowformer.calibrate.qdq import qdq_summary
from lowformer.calibrate.sensitivity import EvalData, auto_exclude_blocks
from lowformer.calibrate.session import calibrated, check_calibration_args
from lowformer.core.progress import Progress, no_progress
from lowformer.data.preprocess import Preprocessing

__all__ = ["CalibrationConfig", "DEFAULT_EVAL_SIZE", "quantize_onnx"]
log = logging.getLogger(__name__)


def quantize_onnx(src: Path, dst: Path, preprocessing: Preprocessing, config: CalibrationConfig,
                  checkpoint: str = "unknown", cache_dir: Optional[Path] = None,
                  progress: Progress = no_progress) -> Dict[str, Any]:
    """Write `dst`, the calibrated Q/DQ INT8 version of the FP32 ONNX `src`; return manifest facts.

    `preprocessing`: how calibration images are fed (the manifest's); `config`: the calibration
    (images, method, target, weight bits, exclusions; lowformer.calibrate.config); `checkpoint`: the
    weights' sha256 (part of the calibration cache key). With `config.auto_exclude`, blocks are kept
    in float until the top-1 drop on a held-out split is <= `config.gate_top1_drop`, choosing the
    fastest set found (harm per ms of float cost on ONNX Runtime's CPU provider; see
    `sensitivity.auto_exclude_blocks`, whose result, with the table of candidates tried, is recorded).
    """
    c = config
    calib_data, calib_size, method, target = c.calib_data, c.calib_size, c.method, c.target
    exclude, auto_exclude, weight_bits = c.exclude, c.auto_exclude, c.weight_bits
    check_calibration_args(method, target, calib_data, weight_bits)
    src, dst = Path(src), Path(dst)
    eval_set = None
    if auto_exclude:
        calib, eval_set = split_eval_and_calibration(calib_data, calib_size, c.eval_data, c.eval_size)
    else:
        calib = select_calibration(calib_data, calib_size)
    with calibrated(src, calib, preprocessing, checkpoint, cache_dir, progress) as session:
        session.weight_bits = weight_bits
        excluded = nodes_matching(session.node_names, exclude)
        auto = None
        if auto_exclude:
            evaluation = EvalData.build(src, eval_set, preprocessing)
            auto = auto_exclude_blocks(session, evaluation, method, target, excluded, c.gate_top1_drop)
            excluded = list(dict.fromkeys(excluded + nodes_of_blocks(session.node_names, auto["kept_float"])))
        facts = session.quantize(dst, method, target, excluded)
        log.info("INT8 weights: %d-bit (%s)", facts["weight_bits"], facts["weight_bits_reason"])
        qat = None
        if c.qat.enabled:
            try:
                qat = distill_qdq(session, dst,
                                  lambda trained, out: session.quantize(out, method, target, excluded, prepared=trained),
                                  c, Path(c.qat.qat_teacher) if c.qat.qat_teacher else None,
                                  cache_dir or src.parent / CACHE_DIRNAME, progress)
            except DistillationFailed as e:  # `dst` still holds the post-training model
                qat = {"failed": str(e), "failed_at_step": e.step}
        cache_hit = session.cache.hit
        cache_file = str(session.cache.path)
    summary = qdq_summary(dst)
    return {"int8": {**facts, "exclude": list(exclude), "auto_exclude": auto, "qdq": summary,
                     **({"qat": qat} if qat else {})},
            "calibration": {**calib.facts(), "preprocessing": preprocessing.to_dict(), "cache": cache_file,
                            "cache_hit": cache_hit, "seed": 0}}
