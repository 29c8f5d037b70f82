"""ONNX -> OpenVINO IR (`model.xml` + `model.bin`): FP32, compressed-FP16 weights, and INT8 by NNCF.

Nothing here sends telemetry (see `convert_onnx` and `_quiet_nncf`).

Every IR is written atomically as a pair: `openvino.save_model` writes into a temporary folder
beside the destination, then the .bin and the .xml are renamed into place (the .bin first, so an
.xml never names weights that are not there yet). The facts returned go into the artifact's
manifest entry, with the .bin's size and sha256 under `weights` (the runner checks them).

INT8 for OpenVINO comes two ways (`--target openvino`, `--quantizer`):
  * `qdq` (the default): our Q/DQ ONNX with the `openvino` target config (symmetric s8 activations
    and weights, Q/DQ on the inputs of weighted layers and residual Adds; lowformer/calibrate/qdq.py),
    converted to IR like any ONNX. All calibration tooling (cache, --exclude, --auto-exclude,
    sensitivity) applies.
  * `nncf`: `nncf.quantize` on the OpenVINO model with our calibration images (lowformer.calibrate.data
    selects them, so `validate` holds them out) and `--exclude` as NNCF's ignored scope (performance
    preset, fast bias correction).
Measured on an AMX Xeon (benchmarks/openvino_speed.py, LowFormer-B1 at 224, 2 threads, bf16 hint for
the float layers): the Q/DQ IR ran 10-15 % faster than NNCF's at batch 1 and 16 (CPU time 11.8 vs
13.2 ms, 72 vs 79 ms), because NNCF also quantizes activation outputs, which leaves separate
FakeQuantize/eltwise kernels (its profile: 35 % of the time in eltwise "Subgraph" layers against
10 %); on EfficientNet-Lite0 (real weights, 1,044 held-out images) both were as accurate (+0.29 pt
top-1, cosine 0.994 vs 0.993). Hence `qdq` is the default and NNCF the option.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from lowformer.core.errors import LowformerError
from lowformer.core.files import ensure_dir, sha256_file
from lowformer.core.progress import Progress, no_progress
from lowformer.data.preprocess import Preprocessing
from lowformer.engines.openvino import core, openvino_module, read_model, weights_path

log = logging.getLogger(__name__)

# The rt_info key OpenVINO writes as the IR attribute `DisablePrecisionConversion`, which the CPU
# plugin honours; set as a string from Python it is only read back as that attribute from an IR.
KEEP_PRECISION_KEY = "precise_0"
KEPT_ATTRIBUTE = "DisablePrecisionConversion"
QUANTIZERS = ("nncf", "qdq")
DEFAULT_QUANTIZER = "qdq"  # faster than NNCF on LowFormer-B1 and as accurate on EfficientNet-Lite0 (module doc)
_NNCF_INSTALL = "NNCF is not installed: pip install 'lowformer[openvino]' (or: pip install nncf)"


def machine_facts() -> Dict[str, Any]:
    """The ISA an IR was checked on (what its INT8/BF16 speed depends on)."""
    from lowformer.core.machine import cpu_flags, cpu_isa

    flags = cpu_flags()
    return {"isa": cpu_isa(flags), "cpu_flags": flags}


def ir_facts(xml: Path) -> Dict[str, Any]:
    """What a manifest records about an IR beside the .xml's own sha256: the .bin, op counts, versions."""
    bin_path = weights_path(xml)
    model = core().read_model(str(xml))
    ops: Dict[str, int] = {}
    kept = 0
    for op in model.get_ordered_ops():
        t = op.get_type_name()
        if t not in ("Constant", "Parameter", "Result"):
            ops[t] = ops.get(t, 0) + 1
        kept += any(str(k).startswith(KEPT_ATTRIBUTE) for k in op.get_rt_info().keys())
    return {"weights": {"path": bin_path.name, "size": bin_path.stat().st_size, "sha256": sha256_file(bin_path)},
            "openvino": str(openvino_module().get_version()), "ops": dict(sorted(ops.items())),
            "kept_f32_ops": kept, "machine": machine_facts()}


def save_ir(model: Any, xml: Path, compress_to_fp16: bool = False) -> Dict[str, Any]:
    """Write `model` as `xml` + its .bin, atomically (temporary folder beside them, then renames)."""
    ov = openvino_module()
    xml = Path(xml)
    ensure_dir(xml.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{xml.stem}.ir-", dir=xml.parent))
    try:
        staged = tmp / xml.name
        try:
            ov.save_model(model, str(staged), compress_to_fp16=compress_to_fp16)
        except Exception as e:
            raise LowformerError(f"OpenVINO cannot write {xml}: {str(e).strip().splitlines()[-1][:200]}") from None
        staged_bin = weights_path(staged)
        if not staged_bin.is_file():  # a model without constants: still write the pair
            staged_bin.write_bytes(b"")
        os.replace(staged_bin, weights_path(xml))
        os.replace(staged, xml)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ir_facts(xml)


def convert_onnx(src: Path, xml: Path, compress_to_fp16: bool = False, keep_f32: Sequence[str] = ()) -> Dict[str, Any]:
    """An ONNX artifact as IR; FP16 compresses the weights only (they are decompressed to the
    inference precision at compile time). The ops of the `keep_f32` blocks stay f32 under a bf16/f16
    hint (`mark_keep_f32`; a block that matches nothing is an error).

    The model is read by OpenVINO's ONNX frontend (`Core.read_model`), which is what
    `openvino.convert_model` runs for an ONNX file, without convert_model's telemetry: that forks a
    process to post usage data (unless the user opted out), which hung the export here whenever the
    fork caught a resolver lock held by another thread, and lowformer sends nothing anywhere."""
    model = read_model(str(src))
    marked = mark_keep_f32(model, keep_f32) if keep_f32 else 0
    facts = save_ir(model, xml, compress_to_fp16)
    # Fewer marks read back: this OpenVINO spells the mark otherwise (FP16 compression adds marked Converts).
    if facts["kept_f32_ops"] < marked:
        raise LowformerError(f"{Path(xml).name}: {marked} op(s) marked to stay f32, {facts['kept_f32_ops']} "
                             f"carry the mark in the IR (OpenVINO {openvino_module().get_version()})")
    out = {**facts, "source": Path(src).name, "compressed_weights": "fp16" if compress_to_fp16 else None}
    if keep_f32:
        out["keep_f32"] = {"blocks": list(keep_f32), "ops": marked}
    return out


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


def ignored_names(model: Any, exclude: Sequence[str], option: str = "--exclude") -> List[str]:
    """The OpenVINO model's ops inside the modules `exclude` names (globs, or blocks like `head`).

    Ops converted from ONNX keep the node names (a convolution's bias split off is `<name>/WithoutBiases`
    + `<name>`), so the same module globs as the Q/DQ path apply."""
    from lowformer.calibrate.blocks import nodes_matching

    if not exclude:
        return []
    names = [op.get_friendly_name() for op in model.get_ordered_ops()]
    base = {n: n[: -len("/WithoutBiases")] if n.endswith("/WithoutBiases") else n for n in names}
    matched = set(nodes_matching(list(dict.fromkeys(base.values())), exclude, option=option))
    return [n for n in names if base[n] in matched]


def keep_f32_blocks(keep_f32: Optional[Sequence[str]]) -> Tuple[str, ...]:
    """The blocks a float IR keeps at f32, each item one or comma-separated (`none`, None or nothing:
    none, OpenVINO's default)."""
    blocks = tuple(dict.fromkeys(b.strip() for item in keep_f32 or () for b in str(item).split(",") if b.strip()))
    return () if blocks == ("none",) else blocks


def mark_keep_f32(model: Any, blocks: Sequence[str]) -> int:
    """Mark the ops of `blocks` so the CPU plugin leaves them at f32 under a bf16/f16 hint; the count.
    The mark takes effect once the IR is written and read back (save_ir; `ir_facts` counts it)."""
    names = set(ignored_names(model, blocks, option="keep_f32"))
    for op in model.get_ordered_ops():
        if op.get_friendly_name() in names:
            op.get_rt_info()[KEEP_PRECISION_KEY] = ""
    return len(names)


def nncf_quantize(src: Path, xml: Path, preprocessing: Preprocessing, calib_data: Optional[str] = None,
                  calib_size: int = 512, exclude: Sequence[str] = (), progress: Progress = no_progress,
                  **unused: Any) -> Dict[str, Any]:
    """INT8 IR of the FP32 ONNX `src` by `nncf.quantize` (performance preset: symmetric weights,
    u8/s8 activations by range, fast bias correction) on our calibration images."""
    from lowformer.calibrate.data import select_calibration
    from lowformer.calibrate.qdq import choose_weight_bits
    from lowformer.core.batching import fixed_batches
    from lowformer.data.imagenet import load_images

    if not calib_data:
        raise LowformerError("INT8 needs calibration images (calib_data)")
    if unused.get("auto_exclude"):
        raise LowformerError("auto_exclude works with the Q/DQ quantizer (quantizer qdq); NNCF takes exclude")
    bits, bits_reason = choose_weight_bits(unused.get("weight_bits"))
    if unused.get("method") not in (None, "percentile"):
        log.info("NNCF sets its own activation ranges: calibration method %s does not apply", unused["method"])
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
                     "quantizer_reason": unused.get("quantizer_reason") or "--quantizer",
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
    passed (0.991), and the plugin's int8 kernels are NNCF's to know. `auto_exclude` needs Q/DQ."""
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


def check_openvino_export(to: Sequence[str], int8: bool, calib: Dict[str, Any]) -> Optional[str]:
    """Before any work: the quantizer of an INT8 export (popped from `calib`; NNCF's reason put in
    as `quantizer_reason`), and OpenVINO / NNCF importable when the export needs them (one line each)."""
    quantizer = None
    if int8:
        quantizer, why = resolve_quantizer(calib.pop("quantizer", None), str(calib.get("target") or "cpu"),
                                           "openvino" in to, calib.get("weight_bits"), bool(calib.get("auto_exclude")))
        if calib.get("target") == "openvino":  # the other targets have one quantizer
            log.info("INT8 quantizer: %s (%s)", quantizer, why)
        if quantizer == "nncf":
            calib["quantizer_reason"] = why
    calib.pop("quantizer", None)
    if quantizer == "nncf" and "openvino" not in to:
        raise LowformerError("the nncf quantizer writes OpenVINO IR: add --to openvino (or use --quantizer qdq "
                             "for a Q/DQ ONNX)")
    if "openvino" in to:
        openvino_module()
    if quantizer == "nncf":
        with _quiet_nncf():
            pass
    return quantizer
