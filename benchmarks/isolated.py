#!/usr/bin/env python
"""Timing artifacts each in its own process, in short rounds interleaved across the artifacts.

Why both: in one process, one runtime's thread pool spins beside the one timed (ONNX Runtime's
threads keep spinning after a call; several OpenVINO compiled models each hold their own pinned
streams). And on these shared 2-core virtual machines the speed of the whole machine drifts by up to
1.6x for stretches of seconds to minutes (seen on 2026-12-02 on an AMD EPYC: the same OpenVINO-only
script measured 17.8 ms, then 31.1 ms, then 18.6 ms in consecutive processes; the two rounds of one
benchmark cell differed by 1.63x), so one long cell per artifact can land entirely in a slow stretch.

So every artifact gets a worker process, loaded once and kept; the parent asks the workers in turn
for a short round of timed calls (while one runs the others wait on their pipe, their runtimes'
threads asleep), for many rounds. A slow stretch then hits every artifact alike. The figure is the
median over the calls of all rounds; the per-round medians show how far the machine drifted.

A worker is `module:function` with JSON keyword arguments: the function (in the calling script, which
is importable from the benchmarks folder) loads the artifact and returns `(call_for, facts)`, where
`call_for(batch_size)` is a zero-argument function doing one inference call and `facts` a JSON-able
dict. A worker that fails raises `JobFailed` with its error in one line.
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
UNSTEADY_ROUNDS = 1.2  # round medians' 75th / 25th percentile above this: say the machine drifted
SETTLE_S = 0.05  # pause before each round: the previous worker's spinning threads go to sleep


class JobFailed(RuntimeError):
    """A timing worker failed; the message is its error in one line."""


class Worker:
    """One artifact, loaded in its own `python isolated.py` process, timed on request."""

    def __init__(self, func: str, kwargs: Dict[str, Any], timeout_s: float = 1800.0):
        self.func, self.timeout_s = func, timeout_s
        self.log = tempfile.TemporaryFile(mode="w+")  # the worker's stderr: its last line names a crash
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], cwd=str(HERE),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, bufsize=1)
        self.facts: Dict[str, Any] = self._ask({"func": func, "kwargs": kwargs})["facts"]

    def _last_error_line(self) -> str:
        self.log.seek(0)
        lines = [ln.strip() for ln in self.log.read().splitlines() if ln.strip()]
        return lines[-1][:200] if lines else "no message"

    def _ask(self, request: Dict[str, Any]) -> Dict[str, Any]:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.close()
            raise JobFailed(f"{self.func} worker exited ({self.proc.returncode}): {self._last_error_line()}")
        try:
            reply = json.loads(line)
        except ValueError:
            self.close()
            raise JobFailed(f"{self.func} worker answered something else: {line.strip()[:200]}") from None
        if "error" in reply:
            self.close()
            raise JobFailed(reply["error"])
        return reply

    def time(self, batch_size: int, seconds: float, max_calls: int, warmup: int = 1,
             min_calls: int = 3) -> Dict[str, List[float]]:
        """Per-call wall and process-CPU ms of about `seconds` of calls (after `warmup` untimed)."""
        return self._ask({"batch_size": batch_size, "seconds": seconds, "max_calls": max_calls, "warmup": warmup,
                          "min_calls": min_calls})

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


def interleaved(jobs: Sequence[Tuple[str, str, Dict[str, Any]]], batch_sizes: Sequence[int], rounds: int,
                seconds: Dict[int, float], max_calls: int,
                on_round: Optional[Callable[[str, int, int, Any], None]] = None,
                needs: Optional[Dict[str, Sequence[int]]] = None) -> Dict[str, Any]:
    """Start a worker per job (key, func, kwargs); then for each batch size `rounds` rounds, in each
    every worker (in turn, the start rotating each round) times about `seconds[batch size]`/`rounds`
    seconds of calls (at least 3 over all rounds; a round's warm-up call is skipped at batch > 1,
    where the working set outgrows the caches anyway). `needs` (key -> batch sizes) limits a job to the
batch sizes it still lacks (a resumed run). Returns key -> {"facts", batch size -> per-round samples},
or key -> JobFailed."""
    out: Dict[str, Any] = {}
    workers: Dict[str, Worker] = {}
    min_calls = -(-3 // max(rounds, 1))
    try:
        for key, func, kwargs in jobs:
            try:
                workers[key] = Worker(func, kwargs)
                out[key] = {"facts": workers[key].facts}
            except JobFailed as e:
                out[key] = e
        for bs in batch_sizes:
            for r in range(max(rounds, 1)):
                keys = [k for k, _, _ in jobs if k in workers and (needs is None or bs in needs.get(k, ()))]
                shift = r % max(len(keys), 1)
                for key in keys[shift:] + keys[:shift]:
                    if key not in workers:
                        continue
                    time.sleep(SETTLE_S)
                    try:
                        samples = workers[key].time(bs, seconds[bs] / max(rounds, 1), max_calls,
                                                    warmup=2 if r == 0 else int(bs == 1), min_calls=min_calls)
                    except JobFailed as e:  # a runtime that cannot run this batch: the job's result
                        out[key] = e
                        workers.pop(key)
                        continue
                    out[key].setdefault(bs, []).append(samples)
                    if on_round:
                        on_round(key, bs, r, samples)
    finally:
        for w in workers.values():
            w.close()
    return out


def combine(rounds_ms: Sequence[Sequence[float]]) -> Dict[str, Any]:
    """One figure from several rounds of per-call times (ms): median, p10/p90, min, mean over all
    calls; every round's median; round_spread, the 75th over the 25th percentile of the round
    medians (how far the machine drifted, robust to one round caught in a slow stretch)."""
    calls = np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds_ms if len(r)])
    medians = [float(np.median(r)) for r in rounds_ms if len(r)]
    return {"n": int(calls.size), "median_ms": float(np.median(calls)), "mean_ms": float(calls.mean()),
            "p10_ms": float(np.percentile(calls, 10)), "p90_ms": float(np.percentile(calls, 90)),
            "min_ms": float(calls.min()), "max_ms": float(calls.max()), "rounds": len(medians),
            "round_medians_ms": [round(m, 3) for m in medians],
            "round_spread": _quartile_ratio(medians)}


def _quartile_ratio(values: Sequence[float]) -> Optional[float]:
    if not values or min(values) <= 0:
        return None
    q25, q75 = np.percentile(values, [25, 75])
    return float(q75 / q25)


def drift_note(stats: Dict[str, Any]) -> Optional[str]:
    """A line when the rounds disagree by more than UNSTEADY_ROUNDS (None when they agree)."""
    spread = stats.get("round_spread")
    if spread and spread > UNSTEADY_ROUNDS:
        lo, hi = min(stats["round_medians_ms"]), max(stats["round_medians_ms"])
        return (f"round medians {lo:.3g}-{hi:.3g} ms, the middle half {spread:.2f}x apart: the machine's speed "
                "drifted")
    return None


def _time_calls(fn: Callable[[], Any], seconds: float, max_calls: int, warmup: int,
                min_calls: int) -> Dict[str, List[float]]:
    for _ in range(max(warmup, 0)):
        fn()
    wall: List[float] = []
    cpu: List[float] = []
    stop = time.perf_counter() + seconds
    while len(wall) < max(max_calls, 1) and (len(wall) < min_calls or time.perf_counter() < stop):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return {"wall_ms": wall, "cpu_ms": cpu}


def sleep_job(ms: float):
    """A worker whose call sleeps `ms` milliseconds: a known duration to check the harness against."""
    return (lambda batch_size: (lambda: time.sleep(ms * batch_size / 1000.0))), {"backend": "sleep", "ms": ms}


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _serve() -> int:
    """The worker's side: load (first request), then one round of timed calls per request."""
    import os

    # Replies go to the pipe on a private descriptor; fd 1 (and sys.stdout) point at stderr, so no
    # print and no native library writing to stdout can break the protocol.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(doc: Dict[str, Any]) -> None:
        replies.write(json.dumps(doc) + "\n")
        replies.flush()

    call_for: Optional[Callable[[int], Callable[[], Any]]] = None
    calls: Dict[int, Callable[[], Any]] = {}
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if call_for is None:
                module, _, name = req["func"].partition(":")
                call_for, facts = getattr(importlib.import_module(module), name)(**req["kwargs"])
                doc: Dict[str, Any] = {"facts": facts}
            else:
                bs = int(req["batch_size"])
                if bs not in calls:
                    calls = {bs: call_for(bs)}  # one batch size's input held at a time
                doc = _time_calls(calls[bs], float(req["seconds"]), int(req["max_calls"]), int(req["warmup"]),
                                  int(req.get("min_calls", 3)))
        except Exception as e:  # the parent records it as the job's result
            reply({"error": _one_line(e)})
            return 1
        reply(doc)
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
