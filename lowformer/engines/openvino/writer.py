"""ONNX -> OpenVINO IR (`model.xml` + `model.bin`): FP32, compressed-FP16 weights, and the IR
of a quantized model (a Q/DQ ONNX, or NNCF's: lowformer.calibrate.nncf).

Nothing here sends telemetry (see `convert_onnx`).

Every IR is written atomically as a pair: `openvino.save_model` writes into a temporary folder
beside the destination, then the .bin and the .xml are renamed into place (the .bin first, so an
.xml never names weights that are not there yet). The facts returned go into the artifact's
manifest entry, with the .bin's size and sha256 under `weights` (the runner checks them).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lowformer.core.errors import LowformerError
from lowformer.core.files import ensure_dir, sha256_file
from lowformer.core.blocks import nodes_matching
from lowformer.engines.openvino.runner import core, openvino_module, read_model, weights_path

log = logging.getLogger(__name__)

# The rt_info key OpenVINO writes as the IR attribute `DisablePrecisionConversion`, which the CPU
# plugin honours; set as a string from Python it is only read back as that attribute from an IR.
KEEP_PRECISION_KEY = "precise_0"
KEPT_ATTRIBUTE = "DisablePrecisionConversion"


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


def ignored_names(model: Any, exclude: Sequence[str], option: str = "--exclude") -> List[str]:
    """The OpenVINO model's ops inside the modules `exclude` names (globs, or blocks like `head`).

    Ops converted from ONNX keep the node names (a convolution's bias split off is `<name>/WithoutBiases`
    + `<name>`), so the same module globs as the Q/DQ path apply."""
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
