"""What an ONNX file says about a TensorRT build (precision, shapes) and the build plan per major version."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union


from lowformer.core.errors import LowformerError
from lowformer.engines.tensorrt.config import TrtBuildConfig


# --------------------------------------------------------------------------- ONNX facts

@dataclass
class OnnxFacts:
    input_name: str
    input_shape: List[Optional[int]]  # [batch or None, C, H, W]
    precision: str  # what the graph itself carries: fp32 | fp16 | int8
    node_names: List[str] = field(default_factory=list)

    @property
    def carries_precision(self) -> bool:
        return self.precision != "fp32"


def inspect_onnx(onnx_path: Union[str, os.PathLike]) -> OnnxFacts:
    """Input name/shape and the precision an ONNX carries (FP16 tensors/Casts, Q/DQ nodes)."""
    import onnx

    p = Path(onnx_path)
    if not p.is_file():
        raise LowformerError(f"no such ONNX file: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise LowformerError(f"cannot read {p} as ONNX: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    g = model.graph
    inits = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise LowformerError(f"{p} has {len(inputs)} inputs; lowformer engines take one image input")
    inp = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or any(d is None for d in dims[1:]):
        raise LowformerError(f"{p}: input {inp.name!r} has shape {dims}; expected [batch, C, H, W] with fixed C, H, W")

    f16 = onnx.TensorProto.FLOAT16
    nodes = list(g.node)
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in nodes):
        precision = "int8"
    elif (any(t.data_type == f16 for t in g.initializer)
          or any(n.op_type == "Cast" and any(a.name == "to" and a.i == f16 for a in n.attribute) for n in nodes)
          or any(v.type.tensor_type.elem_type == f16 for v in list(g.input) + list(g.output))):
        precision = "fp16"
    else:
        precision = "fp32"
    return OnnxFacts(inp.name, dims, precision, [n.name for n in nodes])


# --------------------------------------------------------------------------- build

@dataclass
class BuildPlan:
    """What to ask TensorRT for, decided before touching the builder."""

    precision: str
    strongly_typed: bool
    flags: List[str]  # BuilderFlag names to set (TensorRT 10 weak typing only)
    profile: Optional[Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]]  # min/opt/max input shape
    notes: List[str] = field(default_factory=list)


def check_request(facts: OnnxFacts, fp16: bool, int8: bool, min_batch: int, opt_batch: int, max_batch: int,
                  onnx_name: str = "the ONNX") -> None:
    """Checks that hold for every TensorRT version (run before asking whether TensorRT is here)."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise LowformerError(f"batch sizes must satisfy 1 <= min ({min_batch}) <= opt ({opt_batch}) <= max ({max_batch})")
    if fp16 and int8:
        raise LowformerError("choose one of --fp16 and --int8")
    if int8 and facts.precision != "int8":
        raise LowformerError(f"--int8 needs a Q/DQ INT8 ONNX, but {onnx_name} has no QuantizeLinear nodes "
                             "(implicit INT8 calibration is not supported): build from model_int8.onnx "
                             "(lowformer export MODEL --int8 --calib-data DIR)")
    batch = facts.input_shape[0]
    if batch is not None and (min_batch, opt_batch, max_batch) not in ((1, 1, 1), (batch, batch, batch)):
        raise LowformerError(f"{onnx_name} has a fixed batch of {batch}; re-export it with a dynamic batch "
                             f"to build for batches {min_batch}..{max_batch}")


def plan_build(facts: OnnxFacts, major: int, settings: Optional[TrtBuildConfig] = None,
               onnx_name: str = "the ONNX", **fields: Any) -> BuildPlan:
    """Pure decision logic: network typing, builder flags and the batch profile (raises on conflicts).

    `settings`: a TrtBuildConfig (lowformer.engines.tensorrt.config), or its fields as keywords (fp16,
    int8, strongly_typed, min_batch, opt_batch, max_batch); batches left None get the defaults of
    `default_batch_range`."""
    settings = TrtBuildConfig.build(settings, **fields).resolved(facts.input_shape[0])
    fp16, int8, strongly_typed = settings.fp16, settings.int8, settings.strongly_typed
    min_batch, opt_batch, max_batch = settings.min_batch, settings.opt_batch, settings.max_batch
    if major < 10:
        raise LowformerError(f"TensorRT {major}.x is too old: lowformer builds engines with TensorRT 10 or newer")
    check_request(facts, fp16, int8, min_batch, opt_batch, max_batch, onnx_name)
    carried = facts.precision
    if strongly_typed is None:
        strongly_typed = facts.carries_precision or major >= 11
    if major >= 11 and not strongly_typed:
        raise LowformerError(f"TensorRT {major} builds strongly typed networks only; drop the weak-typing request")

    flags: List[str] = []
    notes: List[str] = []
    precision = carried
    if fp16 and carried == "fp32":
        if major >= 11:
            raise LowformerError(f"TensorRT {major} has no FP16 builder flag and {onnx_name} is FP32: build from "
                                 "the FP16 ONNX instead (lowformer export MODEL --fp16 writes model_fp16.onnx)")
        if strongly_typed:
            raise LowformerError(f"a strongly typed build keeps {onnx_name}'s FP32 types; for --fp16 build from "
                                 "model_fp16.onnx or allow weak typing")
        flags.append("FP16")
        precision = "fp16"
    elif not strongly_typed:
        # TensorRT 10 weak typing of an ONNX that carries precision: enable the kernels it needs.
        flags += {"fp16": ["FP16"], "int8": ["INT8"]}.get(carried, [])
        if fp16 and carried == "int8":
            flags.append("FP16")
    elif fp16 and carried == "int8":
        notes.append("strongly typed INT8 build: layers left in float keep the ONNX's types (--fp16 ignored)")

    batch = facts.input_shape[0]
    chw = tuple(int(d) for d in facts.input_shape[1:])
    # Static shapes need no optimization profile.
    profile = ((min_batch, *chw), (opt_batch, *chw), (max_batch, *chw)) if batch is None else None
    return BuildPlan(precision, bool(strongly_typed), flags, profile, notes)


