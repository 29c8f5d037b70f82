"""INT8 for OpenVINO by NNCF (`--target openvino --quantizer nncf`), and which quantizer an INT8
export uses.

INT8 for OpenVINO comes two ways (`--target openvino`, `--quantizer`):
  * `qdq` (the default): our Q/DQ ONNX with the `openvino` target config (symmetric s8 activations
    and weights, Q/DQ on the inputs of weighted layers and residual Adds; lowformer/calibrate/qdq.py),
    converted to IR like any ONNX. All calibration tooling (cache, --exclude, --auto-exclude,
    sensitivity) applies.
  * `nncf`: `nncf.quantize` on the OpenVINO model with our calibration images (lowformer.calibrate.data
    selects them, so `validate` holds them out) and `--exclude` as NNCF's ignored scope (performance
    preset, fast bias correction).
Measured with benchmarks/openvino_speed.py (LowFormer-B1 at 224, 2 threads; benchmarks/openvino_speed-*.json):
NNCF's IR ran 4-10 % slower than the Q/DQ IR at batch 1 and 16 (wall-clock medians on an AMX Xeon,
an AVX-512 VNNI + BF16 EPYC and an AVX2 EPYC), because NNCF also quantizes activation outputs,
which leaves separate FakeQuantize/eltwise kernels (its profile on the Xeon: 35 % of the time in
eltwise "Subgraph" layers against 10 %); on EfficientNet-Lite0 (real weights, 1,044 held-out
images) both were as accurate (+0.29 pt top-1, cosine 0.994 vs 0.993). Hence `qdq` is the default and NNCF the option.

Nothing here sends telemetry (see `_quiet_nncf`).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from lowformer.calibrate.config import CalibrationConfig
from lowformer.core.errors import LowformerError
from lowformer.core.progress import Progress, no_progress
from lowformer.data.preprocess import Preprocessing
from lowformer.engines.openvino.writer import ignored_names, save_ir
from lowformer.engines.openvino.runner import read_model

log = logging.getLogger(__name__)

QUANTIZERS = ("nncf", "qdq")
DEFAULT_QUANTIZER = "qdq"  # faster than NNCF on LowFormer-B1 and as accurate on EfficientNet-Lite0 (module doc)
_NNCF_INSTALL = "NNCF is not installed: pip install 'lowformer[openvino]' (or: pip install nncf)"


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[Any]:
    """Import and run NNCF without it writing to stdout (its log handler and its rich progress bars
    do, which would spoil `--json`); its warnings go to our log."""
    # No telemetry: NNCF's (openvino_telemetry) forks a sender process per event, and lowformer sends
    # nothing anywhere. NNCF_CI is NNCF's own switch for that, read when nncf is first imported.
    os.environ.setdefault("NNCF_CI", "1")
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            import nncf
        except ImportError:
            raise LowformerError(_NNCF_INSTALL) from None
        cpp_log = logging.getLogger("torch.utils.cpp_extension")  # "No CUDA runtime is found": noise here
        cpp_level = cpp_log.level
        cpp_log.setLevel(logging.ERROR)
        try:  # nncf.quantize imports its torch backend, whose import runs a subprocess (torch's CUDA
            import nncf.torch  # noqa: F401  lookup): do it now, before OpenVINO's threads exist (a fork
        except Exception:  # from a process full of threads can hang the child)
            pass
        finally:
            cpp_log.setLevel(cpp_level)
        nncf_log = logging.getLogger("nncf")
        level, handlers = nncf_log.level, list(nncf_log.handlers)
        for h in handlers:
            nncf_log.removeHandler(h)
        nncf_log.addHandler(_Relay())
        nncf_log.setLevel(logging.WARNING)
        try:
            yield nncf
        finally:
            for h in list(nncf_log.handlers):
                nncf_log.removeHandler(h)
            for h in handlers:
                nncf_log.addHandler(h)
            nncf_log.setLevel(level)


class _Relay(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        log.log(record.levelno, "NNCF: %s", record.getMessage())


def nncf_quantize(src: Path, xml: Path, preprocessing: Preprocessing, config: CalibrationConfig,
                  progress: Progress = no_progress) -> Dict[str, Any]:
    """INT8 IR of the FP32 ONNX `src` by `nncf.quantize` (performance preset: symmetric weights,
    u8/s8 activations by range, fast bias correction) on the calibration images `config` names."""
    from lowformer.calibrate.data import select_calibration
    from lowformer.calibrate.qdq import choose_weight_bits
    from lowformer.core.batching import fixed_batches
    from lowformer.data.imagenet import load_images

    calib_data, calib_size, exclude = config.calib_data, config.calib_size, config.exclude
    if not calib_data:
        raise LowformerError("INT8 needs calibration images (calib_data)")
    if config.auto_exclude:
        raise LowformerError("auto_exclude works with the Q/DQ quantizer (quantizer qdq); NNCF takes exclude")
    bits, bits_reason = choose_weight_bits(config.weight_bits)
    if config.method not in (None, "percentile"):
        log.info("NNCF sets its own activation ranges: calibration method %s does not apply", config.method)
    calib = select_calibration(calib_data, calib_size)
    model = read_model(str(src))
    fixed = model.inputs[0].get_partial_shape()[0]
    fixed_batch = int(fixed.get_length()) if fixed.is_static else None
    images = load_images(calib.samples, preprocessing)
    batches = [b for b, _ in fixed_batches(images, fixed_batch)] if fixed_batch else \
        [np.ascontiguousarray(images[i:i + 1]) for i in range(len(images))]
    ignored = ignored_names(model, exclude)
    with _quiet_nncf() as nncf, progress.task("NNCF quantization", total=1) as task:
        log.info("NNCF: quantizing %s on %d calibration images from %s ...", Path(src).name, len(images), calib.folder)
        # NNCF's overflow fix stores every weight in 7 bits (its default: the first layer only).
        overflow_fix = nncf.OverflowFix.ENABLE if bits == 7 else nncf.OverflowFix.DISABLE
        log.info("INT8 weights: %d-bit (%s; NNCF overflow fix %s)", bits, bits_reason, overflow_fix.value)
        try:
            quantized = nncf.quantize(model, nncf.Dataset(batches), preset=nncf.QuantizationPreset.PERFORMANCE,
                                      subset_size=len(batches), fast_bias_correction=True,
                                      ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
                                      advanced_parameters=nncf.AdvancedQuantizationParameters(
                                          overflow_fix=overflow_fix))
        except Exception as e:
            raise LowformerError(f"NNCF quantization failed: {str(e).strip().splitlines()[0][:200]}") from None
        task.advance()
        version = nncf.__version__
    facts = save_ir(quantized, xml)
    fq = facts["ops"].get("FakeQuantize", 0)
    return {**facts, "source": Path(src).name,
            "int8": {"target": "openvino", "quantizer": "nncf", "nncf": version, "preset": "performance",
                     "quantizer_reason": config.quantizer_reason or "--quantizer",
                     "fast_bias_correction": True, "subset_size": len(batches), "exclude": list(exclude),
                     "weight_bits": bits, "weight_bits_reason": bits_reason, "overflow_fix": overflow_fix.value,
                     "ignored_ops": len(ignored), "fake_quantize_nodes": fq},
            "calibration": {**calib.facts(), "preprocessing": preprocessing.to_dict(), "seed": 0}}


def resolve_quantizer(quantizer: Optional[str], target: str, to_ir: bool = True,
                      weight_bits: "str | int | None" = "auto", auto_exclude: bool = False) -> Tuple[str, str]:
    """(quantizer, why). `nncf` only makes INT8 for OpenVINO; the other targets are Q/DQ ONNX. Unasked,
    an IR with 7-bit weights (an x86 CPU without VNNI, `choose_weight_bits`) comes from NNCF: on an
    AVX2 EPYC our Q/DQ IR of LowFormer-B1 failed parity even with 7-bit weights (cosine 0.957; one
    residual Add whose inputs' scales differ 11x, stages.2.1.attn, cost most of it) where NNCF's
    passed (0.991), and the plugin's int8 kernels are NNCF's to know. `auto_exclude` (or --qat-steps)
    needs Q/DQ."""
    from lowformer.calibrate.qdq import choose_weight_bits

    if quantizer:
        q, why = quantizer.lower(), "--quantizer"
    elif target == "openvino" and to_ir and not auto_exclude and choose_weight_bits(weight_bits)[0] == 7 \
            and _nncf_importable():
        q, why = "nncf", "auto: 7-bit weights (no VNNI), where NNCF's IR keeps parity and our Q/DQ IR may not"
    else:
        q, why = (DEFAULT_QUANTIZER if target == "openvino" else "qdq"), "default"
    if q not in QUANTIZERS:
        raise LowformerError(f"unknown quantizer {quantizer!r} (use {', '.join(QUANTIZERS)})")
    if q == "nncf" and target != "openvino":
        raise LowformerError(f"the nncf quantizer makes INT8 for OpenVINO (target openvino), not for target {target}")
    return q, why


def _nncf_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("nncf") is not None


def check_quantizer(config: CalibrationConfig, writes_nncf: bool) -> CalibrationConfig:
    """Before any work: `config` with the quantizer of an INT8 export chosen (and why, for NNCF), and
    NNCF importable when it is used (one line). `writes_nncf`: a target that takes NNCF's IR is
    asked for (the export's writers say)."""
    quantizer, why = resolve_quantizer(config.quantizer, str(config.target or "cpu"), writes_nncf,
                                       config.weight_bits, bool(config.auto_exclude or config.qat.enabled))
    if config.target == "openvino":  # the other targets have one quantizer
        log.info("INT8 quantizer: %s (%s)", quantizer, why)
    if quantizer == "nncf":
        with _quiet_nncf():
            pass
    return config.replace(quantizer=quantizer, quantizer_reason=why if quantizer == "nncf" else None)
