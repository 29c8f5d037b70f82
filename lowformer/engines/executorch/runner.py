"""Runs `.pte` programs on ExecuTorch's Python runtime (`executorch.runtime.Runtime`), the same C++
runtime and XNNPACK delegate a phone links, on this CPU.

Per-layer profiles come from the runtime's ETDump (lowformer.engines.executorch.etdump), named through
the ETRecord the export wrote beside the program.
"""
from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from lowformer.core.errors import LowformerError, first_line
from lowformer.engines.base import InputSpec, LayerProfile, Runner
from lowformer.engines.executorch.env import native_stderr, require
from lowformer.engines.executorch.writer import etrecord_path

log = logging.getLogger(__name__)

PTE_MAGIC = b"ET"  # bytes 4-6 of a program: its flatbuffer file identifier ET12 (ETxx across versions)
_NATIVE_PREFIX = re.compile(r"^\[[^\]]+\]\s*")


def check_pte(path: Path) -> None:
    """One line for a file that is not an ExecuTorch program (before the runtime reads it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise LowformerError(f"{path}: cannot read it ({first_line(e, limit=120)})") from None
    if len(head) < 8 or head[4:6] != PTE_MAGIC:
        raise LowformerError(f"{path}: not an ExecuTorch program (no ET flatbuffer identifier at byte 4)")


def _native_error(what: str, path: Path, said, e: BaseException) -> LowformerError:
    why = _NATIVE_PREFIX.sub("", said.last) if said.last else first_line(e, limit=200)
    return LowformerError(f"{path}: ExecuTorch cannot {what} it: {why[:220]}")


_loaded = False  # a program has been loaded in this process: its delegates hold the thread pool


def set_threads(threads: Optional[int]) -> Optional[str]:
    """XNNPACK's thread pool size for this process (its default: every core it finds). The pool can
    only be resized before the first program loads: a loaded delegate keeps the pool it was given,
    and resizing it under a live program crashes the process. Returns why `threads` was not applied."""
    if not threads:
        return None
    from executorch.extension.pybindings import portable_lib

    current = portable_lib._threadpool_get_thread_count()
    if current == int(threads):
        return None
    if _loaded:
        return (f"threads {threads} not applied: an ExecuTorch program is already loaded in this process with "
                f"XNNPACK's pool of {current} threads (the pool cannot be resized under it)")
    portable_lib._unsafe_reset_threadpool(int(threads))
    return None


def open_program(path: Path, etdump: bool = False):
    """(program, method "forward") of a `.pte`; a truncated or foreign file is one line."""
    require()
    check_pte(path)
    from executorch.runtime import Runtime

    global _loaded
    try:
        with native_stderr() as said:
            program = Runtime.get().load_program(str(path), enable_etdump=etdump, debug_buffer_size=0)
            _loaded = True
            method = program.load_method("forward")
    except Exception as e:
        raise _native_error("load", path, said, e) from None
    if method is None:
        raise LowformerError(f"{path}: an ExecuTorch program without a forward method")
    return program, method


def input_shape(method) -> tuple:
    meta = method.metadata
    if meta.num_inputs() != 1:
        raise LowformerError(f"an ExecuTorch program with {meta.num_inputs()} inputs (an image classifier takes one)")
    return tuple(int(s) for s in meta.input_tensor_meta(0).sizes())


class ExecuTorchRunner(Runner):
    """One `.pte` (its static batch is the program's input shape: other batches run in chunks of it)."""

    backend = "executorch"
    format = "executorch"
    native = "torch"
    profile_naming = "graph-nodes"
    profile_source = ("ETDump of the ExecuTorch runtime: operator and delegate calls named through the ETRecord's "
                      "debug handles (nn_module_stack); XNNPACK's own operators placed in order inside their call")

    def __init__(self, path: Path, precision: str = "fp32", threads: Optional[int] = None,
                 etrecord: Optional[Path] = None, name: str = "input"):
        self.pte = Path(path)
        require()
        not_applied = set_threads(threads)  # before the program loads: its delegate takes the pool then
        self.program, self.method = open_program(self.pte)
        super().__init__(InputSpec(name, input_shape(self.method)), precision, "cpu", threads, str(path))
        if not_applied:
            self.warnings.append(not_applied)
        self.etrecord = etrecord if etrecord is not None else etrecord_path(self.pte)
        self.provider = "XnnpackBackend"

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self.method.execute([x.contiguous()])
        except Exception as e:
            raise LowformerError(f"{self.pte.name}: ExecuTorch failed to run it: {first_line(e, limit=200)}") from None
        return out[0]

    def timed_call(self, batch: np.ndarray):
        x = [torch.from_numpy(np.ascontiguousarray(batch, np.float32))]
        if self.input_spec.fixed_batch and len(batch) != self.input_spec.fixed_batch:
            return lambda: self.run(batch)
        return lambda: self.method.execute(x)

    def profile(self, batch: Any, iterations: int = 10, warmup: int = 2) -> LayerProfile:
        """`warmup` + `iterations` runs of a second instance of the program with ETDump on; the
        warm-up runs' events are dropped."""
        from lowformer.engines.executorch.etdump import read_etdump

        program, method = open_program(self.pte, etdump=True)
        x = torch.from_numpy(np.ascontiguousarray(batch[: self.input_spec.fixed_batch or len(batch)], np.float32))
        for _ in range(max(warmup, 0) + max(iterations, 1)):
            method.execute([x])
        with tempfile.TemporaryDirectory(prefix="lowformer-etdump-") as tmp:
            dump = Path(tmp) / "run.etdp"
            program.write_etdump_result_to_file(str(dump), str(Path(tmp) / "debug.bin"))
            etrecord = self.etrecord if self.etrecord and Path(self.etrecord).is_file() else None
            # recorded here from this program: no need to read the program back to check it
            return read_etdump(dump, etrecord, skip_runs=max(warmup, 0), precision=self.precision)


def runner_for(path: Path, precision: str, threads: Optional[int], etrecord_name: Optional[str]) -> ExecuTorchRunner:
    etrecord = Path(path).parent / etrecord_name if etrecord_name else None
    return ExecuTorchRunner(Path(path), precision, threads, etrecord)

