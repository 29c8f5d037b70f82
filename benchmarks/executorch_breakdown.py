#!/usr/bin/env python
"""Where an ExecuTorch program's time goes, by operator kind: the FP32 and INT8 `.pte` of one export
folder side by side (why XNNPACK INT8 gains what it gains on this CPU).

    python benchmarks/executorch_breakdown.py artifacts/executorch-speed/b1

Each program runs --runs times (after --warmup) with ETDump on, in this process, with --threads
threads; every event is grouped: XNNPACK operators by kind and data type (`Convolution QC8`,
`Convolution F32`, `Convert`, `HardSwish F32`, ...), portable kernels (operators left outside the
delegate) by name, the delegate calls' own time, and the runtime between calls. Writes
benchmarks/executorch_breakdown-<model>-<isa>.json with the machine. Do not run it while anything
else loads the CPU.
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Dict

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
_DTYPE = re.compile(r"\(([^)]*)\)")


def kind_of(event: str) -> str:
    """`Convolution (NHWC, QC8) IGEMM #3` -> `Convolution QC8`; `Convert (NC) #2` -> `Convert`."""
    from lowformer.engines.executorch.etdump import xnn_kind

    kind = xnn_kind(event)
    m = _DTYPE.search(event)
    types = [t.strip() for t in (m.group(1).split(",") if m else []) if t.strip() not in ("NC", "NHWC", "ND")]
    return f"{kind} {types[0]}" if types else kind


def breakdown(pte: Path, runs: int, warmup: int, threads: int) -> Dict[str, float]:
    """ms per run by operator kind."""
    from lowformer.engines.executorch.etdump import etdump_calls
    from lowformer.engines.executorch.runner import input_shape, open_program, set_threads

    set_threads(threads)
    program, method = open_program(pte, etdump=True)
    x = torch.randn(*input_shape(method))
    for _ in range(warmup + runs):
        method.execute([x])
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "run.etdp"
        program.write_etdump_result_to_file(str(dump), str(Path(tmp) / "debug.bin"))
        calls, run_ms = etdump_calls(dump, skip_runs=warmup)
    out: Dict[str, float] = defaultdict(float)
    for c in calls:
        total = float(np.sum(c.ms)) / runs
        if c.name == "OPERATOR_CALL":
            out[f"portable {c.kernel.split('.')[0]}"] += total
            continue
        inner = 0.0
        for name, ms in c.inner:
            t = float(np.sum(ms)) / runs
            out[kind_of(name)] += t
            inner += t
        out["XNNPACK call overhead"] += max(total - inner, 0.0)
    out["runtime between calls"] = max(float(np.sum(run_ms)) / runs - sum(out.values()), 0.0)
    out["(run total)"] = float(np.sum(run_ms)) / runs
    return dict(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="an export folder with model.pte and model_int8.pte")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    from lowformer.core.files import write_json
    from lowformer.core.machine import cpu_isa, machine_info, slug

    folder = Path(args.folder)
    result = {name: breakdown(folder / name, args.runs, args.warmup, args.threads)
              for name in ("model.pte", "model_int8.pte")}
    fp32, int8 = result["model.pte"], result["model_int8.pte"]
    kinds = sorted(set(fp32) | set(int8), key=lambda k: -(fp32.get(k, 0.0) + int8.get(k, 0.0)))
    print(f"{folder.name}: ms per run by operator kind ({cpu_isa()}, {args.threads} threads, {args.runs} runs)")
    print(f"{'kind':40s} {'FP32':>9s} {'INT8':>9s}")
    for k in kinds:
        print(f"{k:40s} {fp32.get(k, 0.0):9.3f} {int8.get(k, 0.0):9.3f}")
    out = REPO / "benchmarks" / f"executorch_breakdown-{folder.name}-{slug(cpu_isa())}.json"
    write_json(out, {"schema": 1, "folder": str(folder), "runs": args.runs, "warmup": args.warmup,
                     "threads": args.threads, "machine": machine_info(), "ms_per_run": result})
    print(f"written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
