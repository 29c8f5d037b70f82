"""A Q/DQ INT8 ONNX as a trainable PyTorch module: the graph that ships, run as written.

Quantization-aware distillation (lowformer.calibrate.distill) must train exactly the quantization an
INT8 artifact computes: which tensors are quantized, to what dtype, with which scales, which layers
stay float (`--exclude`), what ONNX Runtime's QDQ quantizer folded (a Clip or Relu removed into the
range of the Q that follows a convolution). Any library that inserts fake quantization into a PyTorch
model (torchao's PT2E QAT, ModelOpt's quantizers) does so by its own placement rules, which differ
from the Q/DQ ONNX that TensorRT, ONNX Runtime and OpenVINO run. So this module executes the Q/DQ
ONNX itself, node by node, with fake quantization that rounds and saturates as QuantizeLinear does
(`fake_quantize`, clipped straight-through gradients):

- an activation QuantizeLinear -> DequantizeLinear pair: the ONNX's scale and zero point (the
  calibrated ranges stay fixed);
- a weight DequantizeLinear: the FP32 weight it was quantized from, trainable, fake-quantized per
  channel with the scale ONNX Runtime will compute from the trained weight (its symmetric rule,
  checked against the ONNX's own scales when built);
- a bias DequantizeLinear (int32, the `cpu` target): the FP32 bias, trainable, fake-quantized on the
  grid ONNX Runtime uses (input scale x weight scale).

`trained_initializers()` gives the float weights to write back into the FP32 ONNX, which is then
quantized again with the same ranges, target and exclusions: the same Q/DQ graph, trained weights.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from lowformer.core.errors import LowformerError

QUANTIZED_SUFFIX = "_quantized"
_INT_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def _attrs(node) -> Dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _ints(t: "torch.Tensor | List[int]") -> List[int]:
    """An int64 input tensor or an ints attribute (ONNX moved many from one to the other)."""
    return [int(v) for v in (t.reshape(-1).tolist() if isinstance(t, torch.Tensor) else t)]


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: "torch.Tensor | int", qmin: int,
                  qmax: int) -> torch.Tensor:
    """ONNX QuantizeLinear then DequantizeLinear (x / scale, rounded half to even, saturated), with the
    clipped straight-through gradient: 1 where the value was in range, 0 where it saturated (so a
    Clip the quantizer folded into a range still stops gradients where it clipped)."""
    v = torch.round(x / scale) + zero_point
    out = (v.clamp(qmin, qmax) - zero_point) * scale
    inside = (v >= qmin) & (v <= qmax)
    return out.detach() + (x - x.detach()) * inside


class _WeightQuant:
    """How ONNX Runtime quantizes one weight: symmetric to [-half, half] per channel (or per tensor),
    scale = absmax / half, except where it raised a channel's scale so the int32 bias fits
    (`floor`: those channels' scales as it wrote them, kept as a lower bound)."""

    def __init__(self, axis: Optional[int], half_range: float, floor: np.ndarray):
        self.axis, self.half = axis, half_range
        self.floor = torch.from_numpy(np.asarray(floor, dtype=np.float32))

    def __call__(self, w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(the fake-quantized weight, its per-channel scales)."""
        q = int(self.half)
        dims = [d for d in range(w.dim()) if d != self.axis] if self.axis is not None else list(range(w.dim()))
        absmax = w.detach().abs().amax(dim=dims)
        # ONNX Runtime divides in float64 and stores the scale as float32
        scale = torch.maximum((absmax.double() / self.half).float(), self.floor.to(w.device))
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        shape = [1] * w.dim()
        if self.axis is not None:
            shape[self.axis] = -1
        return fake_quantize(w, scale.reshape(shape), 0, -q, q), scale.reshape(-1)

    @classmethod
    def matching(cls, w: np.ndarray, scale: np.ndarray, axis: Optional[int], where: str) -> "_WeightQuant":
        """The rule that gave `scale` for `w`, checked: ONNX Runtime's symmetric int8 (half 127) or
        7-bit (`reduce_range`, half 64) weights."""
        dims = tuple(d for d in range(w.ndim) if d != axis) if axis is not None else None
        absmax = np.abs(w.astype(np.float64)).max(axis=dims).reshape(-1)
        scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        ratio = np.where(scale > 0, absmax / np.where(scale > 0, scale, 1), 0)
        half = float(np.round(ratio.max())) if ratio.size else 127.0
        raised = ratio < half * (1 - 1e-4)
        if half not in (127.0, 64.0) or np.any(ratio > half * (1 + 1e-4)):
            raise LowformerError(f"QAT graph: {where}: its quantization is not ONNX Runtime's symmetric rule "
                                 f"(absmax/scale up to {ratio.max():g})")
        floor = np.where(raised, scale, 0.0)
        return cls(axis, half, floor if axis is not None else floor[0])


def _torch_pads(pads: List[int]) -> List[int]:
    """ONNX pads (every axis' begin, then every axis' end) as F.pad takes them (the last axis first)."""
    k = len(pads) // 2
    return [v for i in reversed(range(k)) for v in (pads[i], pads[i + k])]


def _conv(x, w, b=None, **a):
    k = len(w.shape) - 2
    pads = list(a.get("pads", [0] * 2 * k))
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise LowformerError("Conv with auto_pad is not supported by the QAT graph")
    strides, dil, group = a.get("strides", [1] * k), a.get("dilations", [1] * k), a.get("group", 1)
    if pads[:k] != pads[k:]:  # asymmetric: pad explicitly
        x = F.pad(x, _torch_pads(pads))
        pads = [0] * 2 * k
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[k]
    return conv(x, w, b, strides, pads[:k], dil, group)


def _gemm(a_, b_, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    y = alpha * torch.matmul(a_.transpose(-1, -2) if transA else a_, b_.transpose(-1, -2) if transB else b_)
    return y if c is None else y + beta * c


def _reshape(x, shape, allowzero=0):
    s = _ints(shape)
    s = [x.shape[i] if v == 0 and not allowzero else v for i, v in enumerate(s)]
    return x.reshape(s)


def _slice(x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    idx = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st != 1:
            raise LowformerError("Slice with a step other than 1 is not supported by the QAT graph")
        n = x.shape[ax]
        idx[ax] = slice(max(min(s, n), -n), max(min(e, n), -n - 1) if e < 0 else min(e, n))
    return x[tuple(idx)]


def _reduce(fn: Callable) -> Callable:
    def run(x, axes=None, keepdims=1, noop_with_empty_axes=0):
        dims = list(range(x.dim())) if axes is None else _ints(axes)
        return fn(x, dims, bool(keepdims))
    return run


def _split(x, split=None, axis=0, num_outputs=None, outputs=2, **a):
    """`outputs`: the node's output count (ONNX splits evenly into that many when no sizes are given)."""
    sizes = _ints(split) if split is not None else a.get("split")
    if sizes is None:
        return torch.split(x, math.ceil(x.shape[axis] / (num_outputs or outputs)), dim=axis)
    return torch.split(x, list(sizes), dim=axis)


def _depth_to_space(x, blocksize, mode=b"DCR"):
    n, c, h, w = x.shape
    b = blocksize
    if mode in (b"DCR", "DCR"):
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


def _layer_norm(x, scale, bias=None, axis=-1, epsilon=1e-5, **_a):
    axis = axis % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale, bias, epsilon)


def _clip(x, lo=None, hi=None, **a):
    lo = a.get("min") if lo is None else lo
    hi = a.get("max") if hi is None else hi
    return torch.clamp(x, lo, hi)


def _pad(x, pads, value=None, axes=None, mode=b"constant"):
    p = _ints(pads)
    if axes is not None or len(p) != 2 * x.dim():
        raise LowformerError("Pad with axes is not supported by the QAT graph")
    m = mode.decode() if isinstance(mode, bytes) else mode
    if m == "constant":
        fill = float(value.reshape(-1)[0]) if value is not None and value.numel() else 0.0
        return F.pad(x, _torch_pads(p), mode="constant", value=fill)
    k = x.dim()
    if p[:2] != [0, 0] or p[k:k + 2] != [0, 0] or m not in ("reflect", "edge", "wrap"):
        raise LowformerError(f"Pad mode {m} of the batch or channel axis is not supported by the QAT graph")
    spatial = p[2:k] + p[k + 2:]
    return F.pad(x, _torch_pads(spatial), mode={"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[m])


def _gather(x, i, axis: int):
    i = i.long()
    i = torch.where(i < 0, i + x.shape[axis], i)
    return torch.index_select(x, axis, i.reshape(-1)).reshape(*x.shape[:axis], *i.shape, *x.shape[axis + 1:])


def _pool(kind: str) -> Callable:
    """2-D AveragePool / MaxPool with symmetric pads (what the exported graphs hold); others refused."""
    def run(x, kernel_shape, strides=None, pads=None, **a):
        pads = list(pads or [0] * 2 * len(kernel_shape))
        k, ceil = len(kernel_shape), bool(a.get("ceil_mode", 0))
        if k != 2 or pads[:k] != pads[k:] or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise LowformerError(f"{kind} other than 2-D with symmetric pads is not supported by the QAT graph")
        if kind == "MaxPool":
            return F.max_pool2d(x, kernel_shape, strides or kernel_shape, pads[:k], a.get("dilations") or 1, ceil)
        return F.avg_pool2d(x, kernel_shape, strides or kernel_shape, pads[:k], ceil, bool(a.get("count_include_pad", 0)))
    return run


def _unsqueeze(x, axes):
    for a in sorted(a % (x.dim() + len(axes)) for a in axes):
        x = x.unsqueeze(a)
    return x


_OPS: Dict[str, Callable] = {
    "Conv": _conv,
    "Gemm": _gemm,
    "MatMul": lambda a, b: torch.matmul(a, b),
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div,
    "Pow": torch.pow, "Sqrt": torch.sqrt, "Erf": torch.erf, "Exp": torch.exp, "Neg": torch.neg,
    "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Relu": F.relu, "Abs": torch.abs, "Reciprocal": torch.reciprocal,
    "Clip": _clip,
    "HardSwish": F.hardswish,
    "HardSigmoid": lambda x, alpha=0.2, beta=0.5: torch.clamp(alpha * x + beta, 0, 1),
    "Softmax": lambda x, axis=-1: torch.softmax(x, axis),
    "ReduceMean": _reduce(lambda x, d, k: x.mean(d, keepdim=k)),
    "ReduceSum": _reduce(lambda x, d, k: x.sum(d, keepdim=k)),
    "ReduceMax": _reduce(lambda x, d, k: x.amax(d, keepdim=k)),
    "GlobalAveragePool": lambda x: x.mean(tuple(range(2, x.dim())), keepdim=True),
    "AveragePool": _pool("AveragePool"),
    "MaxPool": _pool("MaxPool"),
    "Flatten": lambda x, axis=1: x.reshape(int(np.prod(x.shape[:axis])), -1),
    "Reshape": _reshape,
    "Transpose": lambda x, perm=None: x.permute(*(perm or reversed(range(x.dim())))),
    "Slice": _slice,
    "Concat": lambda *xs, axis: torch.cat(xs, axis),
    "Split": _split,
    "Unsqueeze": lambda x, axes: _unsqueeze(x, _ints(axes)),
    "Squeeze": lambda x, axes=None: x.squeeze() if axes is None else x.squeeze(tuple(_ints(axes))),
    "DepthToSpace": _depth_to_space,
    "LayerNormalization": _layer_norm,
    "Identity": lambda x: x,
    "Pad": _pad,
    "Gather": lambda x, i, axis=0: _gather(x, i, axis % x.dim()),
}


class QDQGraph(torch.nn.Module):
    """The Q/DQ ONNX `qdq` as a module whose weights are the FP32 ONNX `fp32`'s, trainable.

    `fp32`, `qdq`: onnx ModelProtos (the prepared FP32 model the quantizer read, and what it wrote).
    There is no float mode: where ONNX Runtime folded a Clip into a range, the graph without its
    quantization would not be the FP32 model (the teacher is that model's ONNX instead)."""

    def __init__(self, fp32, qdq):
        super().__init__()
        from onnx import numpy_helper

        floats = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
        inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
        self.params = torch.nn.ParameterDict()
        self._param_names: Dict[str, str] = {}  # ONNX initializer name -> key in self.params
        self._consts: Dict[str, torch.Tensor] = {}
        self._nodes: List[Tuple[str, List[str], List[str], Dict[str, Any]]] = []
        self._weight_quant: Dict[str, _WeightQuant] = {}  # DQ output -> its weight's quantizer
        self._weight_source: Dict[str, str] = {}  # DQ output -> float initializer name
        self._act_quant: Dict[str, Tuple[torch.Tensor, int, int, int]] = {}  # Q output -> (scale, zp, qmin, qmax)
        self._dq_input: Dict[str, str] = {}  # activation DQ output -> the Q output it reads
        self._int32_bias: set = set()  # DQ outputs of int32 biases (scale = input scale x weight scale)
        self._scales: Dict[str, torch.Tensor] = {}  # weight DQ output -> its scales in this forward
        for name, arr in inits.items():
            if arr.dtype in (np.float32, np.float64, np.float16):
                self._consts[name] = torch.from_numpy(np.array(arr, dtype=np.float32))
            elif arr.dtype.kind in "iub" and not name.endswith(QUANTIZED_SUFFIX):
                self._consts[name] = torch.from_numpy(np.array(arr))
        for node in qdq.graph.node:
            a = _attrs(node)
            ins, outs = list(node.input), list(node.output)
            if node.op_type == "Constant":
                self._consts[outs[0]] = torch.from_numpy(np.array(numpy_helper.to_array(a["value"])))
                continue
            if node.op_type == "DequantizeLinear" and ins[0] in inits:
                self._add_weight(node.name, ins, outs[0], a, inits, floats)
            elif node.op_type == "QuantizeLinear":
                zp = inits.get(ins[2]) if len(ins) > 2 else None
                scale = inits.get(ins[1])
                if scale is None or np.size(scale) != 1:
                    raise LowformerError(f"QAT graph: {node.name}: per-channel activation quantization is not supported")
                qmin, qmax = _INT_RANGES.get(np.dtype(zp.dtype) if zp is not None else np.dtype(np.uint8), (None, None))
                if qmin is None:
                    raise LowformerError(f"QAT graph: {node.name}: zero point of type {zp.dtype} is not supported")
                self._act_quant[outs[0]] = (torch.tensor(float(np.ravel(scale)[0]), dtype=torch.float32),
                                            int(np.ravel(zp)[0]) if zp is not None else 0, qmin, qmax)
            elif node.op_type == "DequantizeLinear":
                self._dq_input[outs[0]] = ins[0]
            elif node.op_type not in _OPS:
                raise LowformerError(f"QAT graph: ONNX operator {node.op_type} ({node.name}) is not supported")
            self._nodes.append((node.op_type, ins, outs, a))
        self._trainable_extras(qdq, floats)
        self.input_name = qdq.graph.input[0].name
        self.output_name = qdq.graph.output[0].name

    def _param(self, onnx_name: str, value: np.ndarray) -> None:
        if onnx_name not in self._param_names:
            key = f"p{len(self._param_names)}"
            self.params[key] = torch.nn.Parameter(torch.from_numpy(np.array(value, dtype=np.float32)))
            self._param_names[onnx_name] = key

    def _add_weight(self, node_name: str, ins: List[str], out: str, a: Dict[str, Any], inits, floats) -> None:
        """A DequantizeLinear of an initializer: a weight (int8) or a bias (int32), from its FP32 source."""
        q = inits[ins[0]]
        stem = ins[0][:-len(QUANTIZED_SUFFIX)] if ins[0].endswith(QUANTIZED_SUFFIX) else ins[0]
        # A float initializer several layers share (a deduplicated bias) is copied by the quantizer
        # as NAME0, NAME1, ...: they train as the one FP32 tensor they are written back to.
        source = next((c for c in (stem, out, stem.rstrip("0123456789")) if c in floats), None)
        if source is None:
            raise LowformerError(f"QAT graph: {node_name}: no FP32 initializer for the quantized {ins[0]}")
        w = floats[source]
        self._param(source, w)
        self._weight_source[out] = source
        if q.dtype == np.int32:
            self._int32_bias.add(out)
            return
        scale = np.asarray(inits[ins[1]])
        axis = None if scale.size == 1 else int(a.get("axis", 1)) % w.ndim
        self._weight_quant[out] = _WeightQuant.matching(w, scale, axis, source)

    def _trainable_extras(self, qdq, floats) -> None:
        """Float normalization parameters train too (LayerNorm scale/bias); other constants stay fixed."""
        for op, ins, _outs, _a in self._nodes:
            if op == "LayerNormalization":
                for name in ins[1:3]:
                    if name in floats:
                        self._param(name, floats[name])

    def _value(self, name: str, env: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        if not name:
            return None
        if name in env:
            return env[name]
        if name in self._param_names:
            return self.params[self._param_names[name]]
        return self._consts[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values(x)[self.output_name]

    def values(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Every tensor of the graph by its ONNX name (fake-quantized where the graph quantizes)."""
        env: Dict[str, torch.Tensor] = {self.input_name: x}
        for op, ins, outs, a in self._nodes:
            if op == "DequantizeLinear":
                if outs[0] in self._weight_source:
                    w = self.params[self._param_names[self._weight_source[outs[0]]]]
                    quant = self._weight_quant.get(outs[0])
                    if quant is not None:
                        w, self._scales[outs[0]] = quant(w)
                    env[outs[0]] = w
                else:  # the Q before it already produced the fake-quantized value
                    env[outs[0]] = env[ins[0]]
                continue
            if op == "QuantizeLinear":
                env[outs[0]] = fake_quantize(self._value(ins[0], env), *self._act_quant[outs[0]])
                continue
            args = [self._value(n, env) for n in ins]
            while args and args[-1] is None:
                args.pop()
            if len(ins) > 2 and ins[2] in self._int32_bias:
                args[2] = self._quantized_bias(args[2], ins, env)
            y = _OPS[op](*args, **a, outputs=len(outs)) if op == "Split" else _OPS[op](*args, **a)
            if isinstance(y, (tuple, list)):
                env.update(zip(outs, y))
            else:
                env[outs[0]] = y
        return env

    def _quantized_bias(self, bias: torch.Tensor, ins: List[str], env: Dict[str, torch.Tensor]) -> torch.Tensor:
        """ONNX Runtime's int32 bias: scale = the input's activation scale x the weight's (per channel)."""
        q_out = self._dq_input.get(ins[0])
        if q_out not in self._act_quant or ins[1] not in self._scales:
            return bias
        scale = (self._act_quant[q_out][0] * self._scales[ins[1]]).double()
        lo, hi = float(np.iinfo(np.int32).min), float(np.iinfo(np.int32).max)
        return fake_quantize(bias.double(), scale, 0, lo, hi).float()

    def to_device(self, device: torch.device) -> "QDQGraph":
        """Parameters, constants and quantization scales on `device`."""
        self.to(device)
        self._consts = {k: v.to(device) for k, v in self._consts.items()}
        self._act_quant = {k: (s.to(device), *rest) for k, (s, *rest) in self._act_quant.items()}
        return self

    def trained_initializers(self) -> Dict[str, np.ndarray]:
        """The trainable FP32 initializers by their ONNX names, as they are now."""
        return {name: self.params[key].detach().cpu().numpy().copy() for name, key in self._param_names.items()}

    @property
    def weights_quantized(self) -> int:
        return len(self._weight_quant)

    @property
    def activations_quantized(self) -> int:
        return len(self._act_quant)
