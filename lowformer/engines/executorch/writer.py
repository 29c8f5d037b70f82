"""`export --to executorch`: `model.pte` (XNNPACK, FP32) and, with `--int8`, `model_int8.pte` (PT2E
static INT8, XNNPACK's quantizer), each with the ETRecord its profiles are named through.

The chain is ExecuTorch's own: `torch.export` -> (INT8: `prepare_pt2e`, calibration on the export's
calibration images, `convert_pt2e`, exported again) -> `to_edge_transform_and_lower(...,
XnnpackPartitioner())` with an ETRecord -> `to_executorch()`. Each graph is lowered once per export.

A program has a static batch (the export's `--batch-size`, else 1): phones run one image at a time,
and a dynamic batch would plan memory for its upper bound. Operators XNNPACK does not take (LowFormer's
GroupNorm, the attention's shape arithmetic) run on ExecuTorch's portable kernels between delegate
calls; the manifest records how many there are.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from lowformer.core.errors import LowformerError, first_line
from lowformer.core.files import atomic_path
from lowformer.core.progress import Progress, no_progress
from lowformer.engines.executorch.env import version
from lowformer.engines.pt2.runner import module_of_node

log = logging.getLogger(__name__)

ETRECORD_SUFFIX = ".etrecord"
# Lowering time, for the progress line's estimate: measured on a 2-core AMD EPYC (AVX2), 7.4 s for a
# 37-op test model and 36.5 s for LowFormer-B1's 282 ops (FP32); other CPUs scale it.
LOWER_S_FIXED, LOWER_S_PER_OP = 3.0, 0.12
# what XNNPACK's quantizer is asked for: symmetric int8 weights per output channel, int8 activations
# per tensor from histogram observers (its get_symmetric_quantization_config(is_per_channel=True))
INT8_SCHEME = {"weights": "int8 symmetric per-channel", "activations": "int8 affine per-tensor (histogram observer)",
               "quantizer": "XNNPACKQuantizer (PT2E)", "fused_clamps": "conv + ReLU6/clamp quantized after the clamp"}


def etrecord_path(pte: Path) -> Path:
    """The ETRecord written beside a program: `model.pte` -> `model.etrecord`."""
    return Path(pte).with_suffix(ETRECORD_SUFFIX)


def fused_attention_modules(model: nn.Module) -> List[nn.Module]:
    """timm's attention modules that call scaled_dot_product_attention (their `fused_attn` flag)."""
    return [m for m in model.modules() if getattr(m, "fused_attn", False) is True]


@contextlib.contextmanager
def explicit_attention(model: nn.Module) -> Iterator[int]:
    """timm's attention modules switched to their explicit path (`fused_attn` off) for the block, and
    back after; yields how many. `scaled_dot_product_attention` decomposes into a softmax guarded
    against all -inf rows (eq, all, where, full_like), which XNNPACK does not take: on LowFormer-B1
    those ops split the program into dozens of delegate calls with portable kernels between them. The
    explicit path (q @ k^T * scale, softmax, @ v) is the same arithmetic, all of it XNNPACK's."""
    switched = fused_attention_modules(model)
    for m in switched:
        m.fused_attn = False
    try:
        yield len(switched)
    finally:
        for m in switched:
            m.fused_attn = True


def capture(model: nn.Module, example: torch.Tensor):
    """`torch.export` of the eval-mode model at the example's (static) shape, attention explicit
    (`explicit_attention`); a model it cannot capture is one line naming the op or module torch names."""
    if not isinstance(model, torch.fx.GraphModule):  # exported graphs refuse train()/eval()
        model = model.eval()
    try:
        with torch.no_grad(), explicit_attention(model):
            return torch.export.export(model, (example,))
    except Exception as e:
        text = str(e).strip()
        where = next((ln.strip() for ln in text.splitlines() if ln.strip().startswith(("File ", "Explanation:"))), "")
        raise LowformerError(f"torch.export cannot capture {type(model).__name__} for ExecuTorch: "
                             f"{first_line(e, limit=160)}" + (f" ({where[:120]})" if where else "")) from None


def fx_names(graph) -> Dict[str, str]:
    """{fx node name: a module-scoped name `/stages/0/0/main/.../<node>`} (what core.blocks reads)."""
    out = {}
    for n in graph.nodes:
        if n.op == "call_function":
            path = module_of_node(n)
            out[n.name] = ("/" + "/".join(path.split(".")) + "/" + n.name) if path else n.name
    return out


@dataclass
class Lowered:
    """A program lowered to XNNPACK: its bytes, its ETRecord, and what the manifest records."""

    buffer: bytes
    etrecord: Any
    facts: Dict[str, Any]


def _bookkeeping(node) -> bool:
    """Graph nodes that are not kernels: delegate calls, tuple access, memory planning's allocs."""
    name = getattr(node.target, "__name__", str(node.target))
    return "executorch_call_delegate" in str(node.target) or name in ("getitem", "alloc")


def lower(program, progress: Progress = no_progress, what: str = "model.pte") -> Lowered:
    """An ExportedProgram lowered to XNNPACK and serialized (one call: it takes tens of seconds on a
    LowFormer)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    ops = sum(1 for n in program.graph.nodes if n.op == "call_function")
    estimate = LOWER_S_FIXED + LOWER_S_PER_OP * ops
    t0 = time.perf_counter()
    with progress.task(f"lowering {what} to XNNPACK ({ops} ops, about {estimate:.0f} s on 2 cores)", total=2) as task:
        try:
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()], generate_etrecord=True)
            task.advance()
            et = edge.to_executorch()
            task.advance()
        except LowformerError:
            raise
        except Exception as e:
            raise LowformerError(f"ExecuTorch could not lower {what}: {first_line(e, limit=200)}") from None
    seconds = time.perf_counter() - t0
    graph = edge.exported_program().graph
    delegated = sum(1 for n in graph.nodes if n.op == "call_function" and "executorch_call_delegate" in str(n.target))
    portable = Counter(str(n.target).split(".")[-2] if "." in str(n.target) else str(n.target)
                       for n in graph.nodes if n.op == "call_function" and not _bookkeeping(n))
    facts = {"executorch": version(), "torch": torch.__version__, "delegate": "XnnpackBackend",
             "delegate_calls": delegated, "portable_ops": sum(portable.values()),
             "portable_op_kinds": dict(sorted(portable.items())), "lower_s": round(seconds, 1),
             "ops": ops}
    log.info("lowered %s to XNNPACK in %.1f s: %d delegate calls, %d ops left to portable kernels",
             what, seconds, delegated, sum(portable.values()))
    return Lowered(et.buffer, et.get_etrecord(), facts)


def save(lowered: Lowered, pte: Path) -> Dict[str, Any]:
    """Write the program and its ETRecord atomically; the program must load again."""
    from lowformer.models.checkpoints import sha256_file

    etr = etrecord_path(pte)
    with atomic_path(pte) as tmp:
        Path(tmp).write_bytes(lowered.buffer)
    with atomic_path(etr) as tmp:
        lowered.etrecord.save(str(tmp))
    return {"etrecord": etr.name, "etrecord_sha256": sha256_file(etr), "etrecord_size": etr.stat().st_size}


# --------------------------------------------------------------------------- INT8 (PT2E)

def _keep_float(graph, exclude: Sequence[str]) -> Callable[[Any], bool]:
    """The quantizer's filter: False for nodes of modules `exclude` names (globs or block names)."""
    from lowformer.core.blocks import nodes_matching

    if not exclude:
        return lambda node: True
    names = fx_names(graph)
    kept = set(nodes_matching(list(names.values()), exclude))
    floats = {fx for fx, scoped in names.items() if scoped in kept}
    return lambda node: node.name not in floats


CALIB_BATCH = 16  # images per observed call (observers dominate the time; the program's batch is 1)


def _calibration_graph(model: nn.Module, example: torch.Tensor) -> Tuple[torch.fx.GraphModule, int]:
    """(the graph the observers are placed in, the batch it takes: 0 = any). Exported with a dynamic
    batch so calibration runs CALIB_BATCH images per call; a model whose graph fixes its batch is
    calibrated at the program's batch."""
    pair = torch.cat([example[:1], example[:1]])  # torch.export specializes a batch of 1
    try:
        with torch.no_grad(), explicit_attention(model):
            ep = torch.export.export(model.eval(), (pair,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        return ep.module(), 0
    except Exception as e:
        log.info("calibrating at batch %d: a dynamic batch does not export (%s)", example.shape[0],
                 first_line(e, limit=100))
        return capture(model, example).module(), int(example.shape[0])


def quantize(model: nn.Module, example: torch.Tensor, images: np.ndarray, exclude: Sequence[str] = (),
             progress: Progress = no_progress, weight_bits: int = 8):
    """(the converted INT8 ExportedProgram at the example's static shape, facts): PT2E with XNNPACK's
    symmetric per-channel config, observers run over the calibration `images`; 7 `weight_bits`
    narrow the weights to [-63, 63]."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from lowformer.core.batching import fixed_batches
    from lowformer.engines.executorch.quantizer import clamp_fusing_quantizer

    graph_module, fixed = _calibration_graph(model, example)
    wmax = 2 ** (weight_bits - 1) - 1
    config = get_symmetric_quantization_config(is_per_channel=True, weight_qmin=-wmax, weight_qmax=wmax)
    quantizer = clamp_fusing_quantizer(config)  # ReLU6 fused like ReLU (lowformer.engines.executorch.quantizer)
    quantizer.set_filter_function(_keep_float(graph_module.graph, exclude))
    t0 = time.perf_counter()
    try:
        prepared = prepare_pt2e(graph_module, quantizer)
    except Exception as e:
        raise LowformerError(f"XNNPACK's quantizer could not prepare the model: {first_line(e, limit=200)}") from None
    batches = [b for b, _ in fixed_batches(images, fixed)] if fixed else \
        [images[i:i + CALIB_BATCH] for i in range(0, len(images), CALIB_BATCH)]
    with progress.task(f"calibrating INT8 on {len(images)} images (PT2E observers)", total=len(batches)) as task, \
            torch.no_grad():
        for b in batches:
            prepared(torch.from_numpy(np.ascontiguousarray(b, np.float32)))
            task.advance()
    converted = convert_pt2e(prepared)
    program = capture(converted, example)
    nodes = [n for n in program.graph.nodes if n.op == "call_function"]
    quant = sum(1 for n in nodes if "quantize_per" in str(n.target) and "dequantize" not in str(n.target))
    facts = {**INT8_SCHEME, "calibrate_s": round(time.perf_counter() - t0, 1), "calibration_batch": fixed or CALIB_BATCH,
             "quantize_nodes": quant, "exclude": list(exclude), "weight_bits": weight_bits}
    return program, facts


# --------------------------------------------------------------------------- the export step

def _weight_range(weight_bits: str) -> Tuple[int, str]:
    """(bits, why): 8 unless 7 is asked for (XNNPACK's int8 kernels need no 7-bit headroom on x86:
    they widen to 16 bits before multiplying, where VNNI's u8*s8 pairs could saturate)."""
    if str(weight_bits) == "7":
        return 7, "--weight-bits 7"
    if str(weight_bits) not in ("auto", "8"):
        raise LowformerError(f"weight bits {weight_bits}: ExecuTorch INT8 takes 7 or 8")
    return 8, "XNNPACK int8 range [-127, 127]" + (" (auto)" if str(weight_bits) == "auto" else "")


def check_int8_config(calib: Any) -> None:
    """Before any work: the calibration options this quantizer takes."""
    if calib.auto_exclude:
        raise LowformerError("auto_exclude searches Q/DQ ONNX models: for ExecuTorch INT8 name the float modules "
                             "with exclude (--exclude)")
    _weight_range(calib.weight_bits)


def _int8_program(ctx: Any, request: Any, example: torch.Tensor) -> Tuple[Any, Dict[str, Any]]:
    """The converted INT8 program: from the export folder's calibration cache when the same weights,
    images and options made it before, else calibrated now (and cached)."""
    calib = request.calib
    images, chosen = ctx.calibration_images()
    bits, why = _weight_range(calib.weight_bits)
    key = {"kind": "executorch-pt2e", "checkpoint": ctx.weights_sha256, "data": chosen.sha256,
           "count": len(chosen), "exclude": list(calib.exclude), "bits": bits, "shape": list(example.shape),
           "torch": torch.__version__, "executorch": version(), "scheme": INT8_SCHEME}
    cache = ctx.cache_file("executorch-int8", key, ".pt2")
    facts: Dict[str, Any] = {"calibration": {**chosen.facts(), "cache": str(cache), "seed": 0,
                                             "preprocessing": ctx.manifest.preprocessing}}
    if cache.is_file():
        try:
            program = torch.export.load(str(cache))
            facts["calibration"]["cache_hit"] = True
            log.info("INT8 program from the calibration cache %s", cache)
            return program, {**facts, "int8": {**INT8_SCHEME, "weight_bits": bits, "weight_bits_reason": why,
                                               "exclude": list(calib.exclude)}}
        except Exception as e:  # a cache from another torch: calibrate again
            log.info("calibration cache %s not readable (%s): calibrating again", cache.name, first_line(e, limit=80))
    program, qfacts = quantize(ctx.model, example, images, calib.exclude, ctx.progress, bits)
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as f:
            torch.export.save(program, f)
    facts["calibration"]["cache_hit"] = False
    return program, {**facts, "int8": {**qfacts, "weight_bits_reason": why}}


def export_programs(ctx: Any, request: Any) -> None:
    """model.pte, and model_int8.pte with `request.int8`, into the export's staging folder, each
    checked against the unfused model and recorded with its ETRecord."""
    batch = int(ctx.batch_size or 1)
    example = torch.from_numpy(np.ascontiguousarray(ctx.inputs[:1].repeat(batch, axis=0)))
    switched = len(fused_attention_modules(ctx.model))
    attention = {"explicit_attention_modules": switched} if switched else {}
    jobs: List[Tuple[str, Callable[[], Tuple[Any, Dict[str, Any]]]]] = [
        ("fp32", lambda: (capture(ctx.model, example), {}))]
    if request.int8:
        jobs.append(("int8", lambda: _int8_program(ctx, request, example)))
    for precision, make in jobs:
        path = ctx.path("executorch", precision)
        program, facts = make()
        lowered = lower(program, ctx.progress, path.name)
        facts = {**lowered.facts, **facts, **save(lowered, path), **attention, "static_batch": batch}
        ctx.check_and_record(path, "executorch", precision, facts)
