"""ETDump -> per-layer times named after the model's modules (`LayerProfile`, naming "graph-nodes").

An ETDump (ExecuTorch's profile of a program's runs: this process's runtime, or `executor_runner` on a
phone) holds, per run, one event per instruction: `OPERATOR_CALL` (a portable kernel) and
`DELEGATE_CALL` (one XNNPACK subgraph), and inside each delegate call XNNPACK's own operator events
("Convolution (NHWC, F32) IGEMM #3"). The ETRecord written at export maps each call's debug handles to
the exported graph's nodes and their `nn_module_stack`:

- an operator call names its module exactly (`how` "handle");
- a delegate call names every node it covers, but XNNPACK reports its operators by kind and index
  only (its delegate writes no debug-handle map). Each XNNPACK operator is placed on the next node of
  its call, in graph order, of a kind it can come from (a "Fully Connected" from a 1x1 convolution or
  a linear); operators XNNPACK inserts (layout transposes, converts) join their neighbour. A call whose
  nodes all sit in one module is exact whatever the order says;
- a delegate call's time outside its operators (entering the delegate, packing inputs) is split
  evenly over its modules; the runtime's time between calls has no module (unattributed).

Recorded elsewhere, an ETDump is only as good as its match with the program: the calls it lists
must be the program's instructions, in order (`check_against_program`).
"""
from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from lowformer.core.errors import LowformerError, first_line
from lowformer.engines.base import LayerProfile, LayerTiming
from lowformer.engines.pt2.runner import module_of_stack

log = logging.getLogger(__name__)

# XNNPACK operator kind (its event name up to " (" or " #") -> aten op kinds it is made from
XNN_SOURCES: Dict[str, Tuple[str, ...]] = {
    "Convolution": ("convolution",), "Deconvolution": ("convolution",),
    "Fully Connected": ("convolution", "linear", "addmm", "mm"),
    "Batch Matrix Multiply": ("bmm", "matmul", "mm"), "Add": ("add",), "Multiply": ("mul",),
    "Subtract": ("sub",), "Divide": ("div",), "HardSwish": ("hardswish",), "GELU": ("gelu",),
    "Sigmoid": ("sigmoid",), "Tanh": ("tanh",), "Softmax": ("_softmax", "softmax"),
    "Clamp": ("clamp", "hardtanh", "relu"), "ReLU": ("relu",), "Leaky ReLU": ("leaky_relu",),
    "Static Reshape": ("view_copy", "squeeze_copy", "unsqueeze_copy", "clone", "_to_copy"),
    "Transpose": ("permute_copy", "transpose"), "Mean": ("mean",),
    "Global Average Pooling": ("mean", "avg_pool2d", "adaptive_avg_pool2d"), "Average Pooling": ("avg_pool2d",),
    "Max Pooling": ("max_pool2d", "max_pool2d_with_indices"), "Concatenate": ("cat",),
    "Square Root": ("sqrt",), "Reciprocal Square Root": ("rsqrt",), "Square": ("pow",), "Negate": ("neg",),
    "Convert": ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel",
                "dequantize_per_channel", "_to_copy"),
    "Copy": ("clone", "_to_copy", "alias_copy"), "Slice": ("slice_copy",),
}
_KIND = re.compile(r"^(.*?)(?:\s+\(|\s+#\d+$)")
_NODE_OP = re.compile(r"^(?:aten_|quantized_decomposed_|dim_order_ops_)?(.*?)(?:_(?:default|Tensor|Scalar|dim|int|"
                      r"self|tensor|using_ints|out|Scalar_mode|Tensor_mode))*(?:_\d+)?_?$")
TOP_LEVEL = ("OPERATOR_CALL", "DELEGATE_CALL")


def xnn_kind(event_name: str) -> str:
    m = _KIND.match(event_name)
    return (m.group(1) if m else event_name).strip()


def node_op(node_name: str) -> str:
    """`aten_convolution_default_79_` -> `convolution` (the ETRecord's node names)."""
    m = _NODE_OP.match(node_name)
    return m.group(1) if m else node_name


@dataclass
class Call:
    """One top-level call of a run: its kind, its nodes (name, module) and the XNNPACK events inside it."""

    name: str
    ms: List[float]
    nodes: List[Tuple[str, str]]
    inner: List[Tuple[str, List[float]]] = field(default_factory=list)
    kernel: str = ""  # an operator call: the kernel the runtime ran (native_call_<op>.<overload>)


def _raw(event, skip: int) -> List[float]:
    pd = getattr(event, "perf_data", None)
    raw = list(pd.raw) if pd is not None and pd.raw is not None else []
    return raw[skip:] if len(raw) > skip else raw[-1:]


def _inspector(etdump: Path, etrecord: Optional[Path]):
    from lowformer.engines.executorch.env import native_stderr, require

    require()
    from executorch.devtools import Inspector

    try:
        # the Inspector warns about debug data we do not ask for (tensor outputs, kwargs it cannot show)
        with native_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Inspector(etdump_path=str(etdump), etrecord=str(etrecord) if etrecord else None)
    except Exception as e:
        what = f"{etdump.name} with {etrecord.name}" if etrecord else etdump.name
        raise LowformerError(f"cannot read the ETDump {what}: {first_line(e, limit=200)}") from None


def etdump_calls(etdump: Path, etrecord: Optional[Path] = None, skip_runs: int = 0) -> Tuple[List[Call], List[float]]:
    """(the top-level calls of one run, each with its XNNPACK operators and per-run times; each run's
    Method::execute time) of an ETDump, the first `skip_runs` runs dropped."""
    return _calls(_inspector(Path(etdump), etrecord), skip_runs)


def _calls(inspector, skip: int) -> Tuple[List[Call], List[float]]:
    """The top-level calls of one run (events in order) and each run's Method::execute time."""
    calls: List[Call] = []
    run_ms: List[float] = []
    for block in inspector.event_blocks:
        pending: List[Tuple[str, List[float]]] = []
        kernel = ""
        for e in block.events:
            if e.name == "Method::execute":
                run_ms = _raw(e, skip)
            elif getattr(e, "is_delegated_op", False):
                pending.append((e.name, _raw(e, skip)))
            elif e.name.startswith("native_call_"):
                kernel = e.name[len("native_call_"):]
            elif e.name in TOP_LEVEL:
                nodes = [(n, module_of_stack(s)) for n, s in (e.module_hierarchy or {}).items()]
                calls.append(Call(e.name, _raw(e, skip), nodes, pending if e.name == "DELEGATE_CALL" else [],
                                   kernel if e.name == "OPERATOR_CALL" else ""))
                pending, kernel = [], ""
    return calls, run_ms


def _total(ms: Sequence[float]) -> float:
    return float(sum(ms))


def _place_inner(call: Call) -> List[Tuple[str, str, float, str]]:
    """(XNNPACK event, module, ms, how) for each operator inside a delegate call."""
    modules = [m for _, m in call.nodes]
    single = modules[0] if modules and all(m == modules[0] for m in modules) else None
    ops = [node_op(n) for n, _ in call.nodes]
    out = []
    pos, last = 0, None
    for name, ms in call.inner:
        if single is not None:
            out.append((name, single, _total(ms), "handle"))
            continue
        sources = XNN_SOURCES.get(xnn_kind(name), ())
        hit = next((i for i in range(pos, len(ops)) if ops[i] in sources), None)
        if hit is not None and modules[hit]:
            pos, last = hit + 1, modules[hit]
            out.append((name, modules[hit], _total(ms), "order"))
        else:  # inserted by XNNPACK (layout transposes, converts): with its neighbour (before the first
            # placed operator, the next node with a module: the input's quantize belongs to the stem)
            if hit is not None:  # its node is outside any module (the input's quantize)
                pos = hit + 1
            neighbour = last if last else next((m for m in modules[pos:] if m), "")
            out.append((name, neighbour, _total(ms), "neighbour"))
    return out


@dataclass
class EtdumpTimings:
    """What an ETDump says, placed: per-layer timings, each run's total, and how they were named."""

    timings: List[LayerTiming]
    run_ms: List[float]
    warnings: List[str]
    placed: Dict[str, float]  # ms per `how`: handle, order, neighbour, split, none


def place(calls: Sequence[Call], run_ms: Sequence[float], named: bool) -> EtdumpTimings:
    timings: List[LayerTiming] = []
    placed: Dict[str, float] = {}
    warnings: List[str] = []
    no_inner = 0
    runs = max((len(c.ms) for c in calls), default=1)

    def add(name: str, op: str, ms: float, modules: List[str], how: str) -> None:
        timings.append(LayerTiming(name, op, ms, runs, [m for m in modules if m] if named else []))
        placed[how] = placed.get(how, 0.0) + ms

    for i, call in enumerate(calls):
        total = _total(call.ms)
        modules = list(dict.fromkeys(m for _, m in call.nodes if m))
        if call.name == "OPERATOR_CALL":
            op = call.kernel or (node_op(call.nodes[0][0]) if call.nodes else "operator")
            add(f"#{i} {op}", op, total, modules, "handle" if modules else "none")
            continue
        inner = _place_inner(call) if call.inner else []
        if not call.inner:
            no_inner += 1
        for name, module, ms, how in inner:
            add(f"#{i} {name}", xnn_kind(name), ms, [module], how if module else "none")
        rest = total - sum(ms for _, _, ms, _ in inner)
        if rest > 0:
            add(f"#{i} XNNPACK call" + (" overhead" if inner else ""), "delegate", rest, modules,
                "split" if len(modules) > 1 else ("handle" if modules else "none"))
    between = _total(run_ms) - sum(_total(c.ms) for c in calls)
    if between > 0:
        add("runtime between calls", "runtime", between, [], "none")
    if no_inner and calls:
        warnings.append(f"{no_inner} XNNPACK delegate call(s) recorded no per-operator events (a runtime built "
                        "without XNNPACK profiling): their time is split evenly over the modules they cover")
    total = sum(placed.values())
    if named and total > 0 and any(c.inner for c in calls):
        share = lambda how: 100.0 * placed.get(how, 0.0) / total  # noqa: E731
        warnings.append(f"XNNPACK reports its operators by kind and index, without debug handles: {share('order'):.0f}% "
                        f"of the time placed on its call's nodes by kind and order, {share('neighbour'):.0f}% beside "
                        f"a neighbour (layout transposes, converts), {share('split'):.0f}% split over a call's modules "
                        f"(entering the delegate), {share('handle'):.0f}% exact (portable kernels, one-module calls)")
    if not named:
        warnings.append("no ETRecord: times are per call and operator, not named after modules (the export "
                        "writes model.etrecord beside model.pte: keep it with the program)")
    return EtdumpTimings(timings, list(run_ms), warnings, placed)


# --------------------------------------------------------------------------- the program it came from

def program_calls(pte: Path) -> List[str]:
    """The program's instructions that an ETDump lists, in order: `delegate`, or the kernel
    (`native_group_norm.out`)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    try:
        pte_file = deserialize_pte_binary(Path(pte).read_bytes())
    except Exception as e:
        raise LowformerError(f"{pte}: cannot read its program ({first_line(e, limit=160)})") from None
    program = getattr(pte_file, "program", pte_file)
    plan = next((p for p in program.execution_plan if p.name == "forward"), program.execution_plan[0])
    out = []
    for ins in plan.chains[0].instructions:
        kind = type(ins.instr_args).__name__
        if kind == "DelegateCall":
            out.append("delegate")
        elif kind == "KernelCall":
            op = plan.operators[ins.instr_args.op_index]
            out.append(f"{op.name.split('::')[-1]}.{op.overload}")
    return out


def check_against_program(calls: Sequence[Call], expected: Sequence[str], etdump: Path, pte: Path) -> None:
    """One line when the ETDump's calls are not the program's instructions (another program's ETDump)."""
    seen = ["delegate" if c.name == "DELEGATE_CALL" else c.kernel for c in calls]
    if not seen:
        raise LowformerError(f"{etdump.name}: an ETDump with no operator or delegate calls (was the program run "
                             "with event tracing on?)")
    if seen != list(expected):
        first = next((i for i, (a, b) in enumerate(zip(seen, expected)) if a != b), min(len(seen), len(expected)))
        got = seen[first] if first < len(seen) else "(end)"
        want = expected[first] if first < len(expected) else "(end)"
        raise LowformerError(f"{etdump.name} was not recorded from {pte.name}: call {first} is {got}, the program's "
                             f"is {want} ({len(seen)} calls vs {len(expected)} instructions)")


_QUANTIZED = re.compile(r"\b(QS8|QU8|QC8|QD8|QC4|QB4)\b")
_INSERTED = ("Transpose", "Convert", "Copy", "Static Reshape")  # XNNPACK adds these on its own
MAX_UNPLACED = 0.2  # more of a call's own operators than this without a node of their kind: another program


def check_against_record(calls: Sequence[Call], precision: Optional[str], etdump: Path, etrecord: Path) -> None:
    """One line when XNNPACK's operators are not those of the ETRecord's program: kernels of another
    precision (an INT8 program's QC8 convolutions against an FP32 record), or operators with no node
    of their kind in the call they sit in."""
    inner = [name for c in calls for name, _ in c.inner]
    quantized = sum(1 for n in inner if _QUANTIZED.search(n))
    if precision == "fp32" and quantized:
        raise LowformerError(f"{etdump.name} ran {quantized} INT8 XNNPACK kernels: it was recorded from an INT8 "
                             f"program, not the FP32 program of {etrecord.name}")
    if precision == "int8" and inner and not quantized:
        raise LowformerError(f"{etdump.name} ran no INT8 XNNPACK kernel: it was recorded from a float program, "
                             f"not the INT8 program of {etrecord.name}")
    own = [(c, name) for c in calls for name, _ in c.inner if xnn_kind(name) not in _INSERTED]
    unplaced = sum(1 for c, name in own if not set(XNN_SOURCES.get(xnn_kind(name), ("?",))) &
                   {node_op(n) for n, _ in c.nodes})
    if own and unplaced > MAX_UNPLACED * len(own):
        raise LowformerError(f"{etdump.name} does not match {etrecord.name}: {unplaced} of {len(own)} XNNPACK "
                             "operators have no node of their kind in their delegate call (another program's ETDump)")


def read_etdump(etdump: Path, etrecord: Optional[Path] = None, skip_runs: int = 0,
                program: Optional[Path] = None, precision: Optional[str] = None) -> LayerProfile:
    """A LayerProfile from an ETDump (and the ETRecord that names its calls): the first `skip_runs`
    runs dropped (warm-up). With `program` (and its `precision`), the ETDump must be that program's."""
    etdump = Path(etdump)
    if not etdump.is_file():
        raise LowformerError(f"no such ETDump: {etdump}")
    inspector = _inspector(etdump, etrecord)
    calls, run_ms = _calls(inspector, skip_runs)
    if program is not None:
        check_against_program(calls, program_calls(program), etdump, Path(program))
    if etrecord is not None:
        unknown = [c for c in calls if not c.nodes]
        if calls and len(unknown) == len(calls):
            raise LowformerError(f"{etrecord.name} names none of the calls in {etdump.name}: it is another "
                                 "program's ETRecord")
        check_against_record(calls, precision, etdump, etrecord)
    result = place(calls, run_ms, named=etrecord is not None)
    how = ", ".join(f"{k} {v / max(sum(result.placed.values()), 1e-12):.0%}" for k, v in result.placed.items())
    log.info("ETDump %s: %d calls over %d runs, time placed by %s", etdump.name, len(calls), len(run_ms), how)
    return LayerProfile(result.timings, "graph-nodes", result.run_ms or None, (), result.warnings,
                        source=f"ETDump {etdump.name}" + (f" named through {etrecord.name}" if etrecord else ""))
