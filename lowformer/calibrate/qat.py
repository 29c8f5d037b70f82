"""`--qat-steps`: after post-training quantization, distill the Q/DQ model toward the FP32 model and
write the same Q/DQ graph again with the trained weights (lowformer.calibrate.distill).

The post-training model is kept beside it (`model_int8_ptq.onnx`), so `validate` scores both on the
same images and the gain is a measured, paired delta.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from lowformer.calibrate.config import CalibrationConfig
from lowformer.calibrate.data import ImageSet, select_calibration
from lowformer.calibrate.distill import DistillConfig, DistillationFailed, distill, teacher_logits
from lowformer.core.errors import LowformerError
from lowformer.core.progress import Progress, no_progress
from lowformer.data.imagenet import load_images
from lowformer.models.checkpoints import sha256_file

log = logging.getLogger(__name__)
PTQ_SUFFIX = "_ptq"
MIN_GRAPH_COSINE = 0.99  # the trained graph against the ONNX written from it (float rounding differs)


def post_training_path(dst: Path) -> Path:
    """Where the post-training model is kept beside the distilled one (model_int8_ptq.onnx)."""
    return dst.with_name(f"{dst.stem}{PTQ_SUFFIX}{dst.suffix}")


def distill_qdq(session, dst: Path, requantize: Callable[[Path, Path], Dict[str, Any]], config: CalibrationConfig,
                teacher: Optional[Path] = None, cache_dir: Optional[Path] = None,
                progress: Progress = no_progress) -> Dict[str, Any]:
    """Distill the post-training Q/DQ model `dst` (quantized from the calibration `session`'s FP32
    model, `config.qat` says how) and write the result to `dst` with `requantize(trained_fp32, dst)`
    (the same ranges, target and exclusions); the post-training model moves to
    `post_training_path(dst)`. `teacher`: an ONNX of the same classes (default: that FP32 model).
    Returns the manifest's `qat` facts."""
    import onnx

    from lowformer.calibrate.qdq_torch import QDQGraph
    from lowformer.calibrate.session import model_input

    prepared, qat, session_src = session.prepared, config.qat, session.source
    teacher = Path(teacher or session_src)
    _name, fixed = model_input(dst)
    if fixed and fixed != qat.qat_batch_size:
        raise LowformerError(f"the INT8 model has a fixed batch of {fixed}: distill it with --qat-batch-size {fixed} "
                             "(or export with a dynamic batch)")
    images_set = select_calibration(qat.qat_data, config.calib_size) if qat.qat_data else session.calib
    images = load_images(images_set.samples, session.preprocessing)
    t_logits = teacher_logits(teacher, images, progress)
    fp32 = onnx.load(str(prepared))
    graph = QDQGraph(fp32, onnx.load(str(dst)))
    key = _state_key(dst, images_set, qat, teacher)
    state = Path(cache_dir) / f"qat-{key[:16]}.pt" if cache_dir else None
    if state is not None:
        state.parent.mkdir(parents=True, exist_ok=True)
    log.info("distilling the INT8 model: %d steps of %d images (%d images, %d views)", qat.qat_steps,
             qat.qat_batch_size, len(images), 2 * len(images))
    facts = distill(graph, images, t_logits, qat, state_file=state, state_key=key, progress=progress)
    if state is not None:  # states of earlier, abandoned runs (other options) go too
        for old in state.parent.glob("qat-*.pt"):
            old.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="lowformer-qat-") as tmp:
        trained, written = Path(tmp) / "trained.onnx", Path(tmp) / dst.name
        _write_weights(fp32, graph.trained_initializers(), trained)
        requantize(trained, written)
        check = images[:fixed or 8]
        facts["graph_cosine"] = _graph_cosine(graph, written, check)
        if not facts["graph_cosine"] >= MIN_GRAPH_COSINE:  # NaN fails too
            raise DistillationFailed(f"the distilled Q/DQ model does not compute what was trained (cosine "
                                     f"{facts['graph_cosine']:.4f} on {len(check)} images); the post-training "
                                     "INT8 model is kept")
        ptq = post_training_path(dst)
        shutil.copyfile(dst, ptq)
        shutil.copyfile(written, dst)
    own_teacher = session_src is not None and teacher == Path(session_src)
    return {**facts, "teacher": {"path": "the FP32 model (model.onnx)" if own_teacher else str(teacher),
                                 "sha256": sha256_file(teacher), "outputs": int(t_logits.shape[-1])},
            "distillation_images": images_set.facts(), "post_training": ptq.name,
            "quantized_weights": graph.weights_quantized, "quantized_activations": graph.activations_quantized}


def _state_key(dst: Path, images: ImageSet, config: DistillConfig, teacher: Path) -> str:
    """What a saved run must match to be resumed: the post-training model, images, options, teacher."""
    data = {"ptq": sha256_file(dst), "images": images.sha256, "config": config.to_dict(),
            "teacher": sha256_file(Path(teacher))}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _write_weights(model, weights: Dict[str, np.ndarray], dst: Path) -> None:
    import onnx
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.name in weights:
            value = weights[init.name]
            if not np.isfinite(value).all():
                raise DistillationFailed(f"quantization-aware distillation left non-finite weights in {init.name}; "
                                         "the post-training INT8 model is kept")
            init.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(init).dtype), init.name))
    onnx.save(model, str(dst))


def _graph_cosine(graph, path: Path, images: np.ndarray) -> float:
    """The trained graph's logits against the ONNX written from it, computed as written (ORT without
    fusions: Q/DQ as TensorRT's reference arithmetic)."""
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(images)
    want = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64).ravel()
    with torch.no_grad():
        got = graph(torch.from_numpy(x)).numpy().astype(np.float64).ravel()
    return float(want @ got / (np.linalg.norm(want) * np.linalg.norm(got) + 1e-30))
