"""The one timing harness: every job in its own worker process, timed in short rounds interleaved across the jobs.

Why both: in one process, one runtime's thread pool spins beside the one timed (ONNX Runtime's threads
keep spinning after a call; several OpenVINO compiled models each hold their own pinned streams). And
on shared virtual machines the speed of the whole machine drifts by up to 1.6x for stretches of
seconds to minutes (seen on 2026-12-02 on an AMD EPYC: the same OpenVINO-only script measured 17.8 ms,
then 31.1 ms, then 18.6 ms in consecutive processes), so one long stretch of calls per job can land
entirely in a slow stretch.

So every job gets a worker process, loaded once and kept; the parent asks the workers in turn for a
short round of timed calls (while one runs the others wait on their pipe, their runtimes' threads
asleep), for many rounds, the first worker rotating each round. A slow stretch then hits every job
alike. The figure is the median over the calls of all rounds; the per-round medians show how far the
machine drifted (`combine`, `drift_note`). `copies` > 1 starts that many workers per job, timed at once
in each round (several processes at the same time: `lowformer bench --jobs N`).

A worker is `module:function` with JSON keyword arguments: the function loads what it times and returns
`(call_for, facts)`, where `call_for(batch_size)` is a zero-argument function doing one inference call
(finished when it returns) and `facts` a JSON-able dict. A job that fails is a `JobFailed`, its error in
one line; the other jobs go on.

Used by `lowformer bench` (lowformer.bench), the INT8 speed check of an export (lowformer.export.speed)
and the scripts in benchmarks/. Nothing here imports more than the standard library and numpy at load
time: a worker process pays only for what its function imports.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:
    from lowformer.core.harness_config import HarnessConfig

UNSTEADY_ROUNDS = 1.2  # round medians' 75th / 25th percentile above this: the machine's speed drifted
SETTLE_S = 0.05  # pause before a round of another job: the previous worker's spinning threads go to sleep
TIMEOUT_S = 1800.0  # a worker that has not answered a request by then is a failure, not a hang
_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the lowformer package
# The worker process: this file run without importing the lowformer package (torch) first; so nothing of
# lowformer is imported at load time here (lowformer.core.errors only inside the parent's functions).
_BOOT = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('lowformer.core.harness', {path!r}); "
         "m = importlib.util.module_from_spec(s); sys.modules[s.name] = m; s.loader.exec_module(m); "
         "sys.exit(m._serve())")

Job = Tuple[str, str, Dict[str, Any]]  # (key, "module:function", keyword arguments)
Samples = Dict[str, Any]  # one round of one job: {"wall_ms": [...], "cpu_ms": [...]} (+ "per_copy")


class JobFailed(RuntimeError):
    """A worker failed. str(): its error in one line (`Type: first line`); `kind`: the exception's type name;
    `message`: its whole message; `exit_code`: set when it was a LowformerError (a refusal, to pass on)."""

    def __init__(self, line: str, kind: str = "", message: str = "", exit_code: Optional[int] = None):
        super().__init__(line)
        self.kind, self.message, self.exit_code = kind, message or line, exit_code

    def user_error(self):
        """The worker's LowformerError (NeedsTargetDevice kept as such) to raise as is; None for any other error."""
        from lowformer.core.errors import LowformerError, NeedsTargetDevice

        if self.exit_code is None:
            return None
        err = (NeedsTargetDevice if self.kind == "NeedsTargetDevice" else LowformerError)(self.message)
        err.exit_code = self.exit_code
        return err


def _failed(error: Dict[str, Any]) -> JobFailed:
    from lowformer.core.errors import first_line

    kind, message = str(error.get("type") or "Error"), str(error.get("message") or "")
    line = f"{kind}: {first_line(message, limit=200)}" if message.strip() else kind
    return JobFailed(line, kind, message, error.get("exit_code"))


class Worker:
    """One job, loaded in its own process, timed on request. `start()` launches it; `facts` waits for its load."""

    def __init__(self, func: str, kwargs: Dict[str, Any], path: Sequence[str] = (), timeout_s: float = TIMEOUT_S):
        self.func, self.kwargs, self.path, self.timeout_s = func, kwargs, list(path), timeout_s
        self.log = tempfile.TemporaryFile(mode="w+")  # the worker's stderr: its last line names a crash
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT.format(path=str(Path(__file__).resolve()))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     bufsize=1)
        self._send({"func": func, "kwargs": kwargs, "path": self.path + [_ROOT]})
        self._facts: Optional[Dict[str, Any]] = None

    @property
    def facts(self) -> Dict[str, Any]:
        if self._facts is None:
            self._facts = self._receive()["facts"]
        return self._facts

    def _last_error_line(self) -> str:
        self.log.seek(0)
        lines = [ln.strip() for ln in self.log.read().splitlines() if ln.strip()]
        return lines[-1][:200] if lines else "no message"

    def _send(self, request: Dict[str, Any]) -> None:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the reply's absence says why

    def _receive(self) -> Dict[str, Any]:
        line = ""
        try:
            if os.name == "posix":  # a deadline; elsewhere a hung worker hangs the caller
                import select

                ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
                if not ready:
                    self.close()
                    raise JobFailed(f"{self.func} worker did not answer within {self.timeout_s:.0f} s")
            line = self.proc.stdout.readline()
        except (OSError, ValueError):
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
            raise _failed(reply["error"])
        return reply

    def request_round(self, batch_size: int, seconds: float, max_calls: int, min_calls: int, warmup: int) -> None:
        """Ask for about `seconds` of timed calls (at least `min_calls`, at most `max_calls`) after `warmup`
        untimed ones; `receive_round` collects them (so several workers can time at once)."""
        self._send({"batch_size": batch_size, "seconds": seconds, "max_calls": max_calls, "min_calls": min_calls,
                    "warmup": warmup})

    def receive_round(self) -> Samples:
        """Per-call wall and process-CPU ms of the round asked for."""
        return self._receive()

    def time(self, batch_size: int, seconds: float, max_calls: int, warmup: int = 1, min_calls: int = 3) -> Samples:
        self.request_round(batch_size, seconds, max_calls, min_calls, warmup)
        return self.receive_round()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.log):
            try:
                f.close()
            except OSError:
                pass


def _round_plan(rounds: int, calls: Optional[int], min_calls: int) -> List[Tuple[int, int]]:
    """(least, most) timed calls of each round: `calls` split exactly, else at least `min_calls` over all."""
    if calls is not None:
        n = max(calls, 1)
        rounds = min(max(rounds, 1), n)
        return [(n // rounds + (r < n % rounds),) * 2 for r in range(rounds)]
    rounds = max(rounds, 1)
    least = -(-max(min_calls, 1) // rounds)
    return [(least, 0)] * rounds


def interleaved(jobs: Sequence[Job], batch_sizes: Sequence[int], rounds: Optional[int] = None,
                seconds: Optional[Dict[int, float]] = None, max_calls: Optional[int] = None,
                on_round: Optional[Callable[[str, int, int, Samples], None]] = None,
                config: Optional["HarnessConfig"] = None, **fields: Any) -> Dict[str, Any]:
    """Start a worker per job (key, func, kwargs; `copies` workers per job, timed at once); then for each
    batch size `rounds` rounds, in each every job (in turn, the first rotating each round) times about
    `seconds[batch size]` / `rounds` seconds of calls: at most `max_calls` per round, at least `min_calls`
    over all rounds. `calls`: exactly that many timed calls per job and batch size instead, split over the
    rounds (at most `calls` rounds; `seconds` is then not used). Before its first round a job makes `warmup`
    untimed calls, before a later one that follows another job's `rewarm` (default: 1 at batch 1, where the
    other job evicted the caches, else 0). `needs` (key -> batch sizes) limits a job to the batch sizes it
    lacks (a resumed run); `path`: folders the workers import their functions from.

    `config`: a HarnessConfig (lowformer.core.harness_config), or its fields as keywords (rounds,
    seconds and max_calls also positionally; None: the config's). `on_round(key, batch size, round,
    samples)` is called after each round.

    Returns key -> {"facts": facts, batch size -> [one Samples per round]} or key -> JobFailed; with
    `copies` > 1 a round's "wall_ms"/"cpu_ms" hold every copy's calls and "per_copy" each copy's."""
    from lowformer.core.harness_config import HarnessConfig

    given = {k: v for k, v in (("rounds", rounds), ("seconds", seconds), ("max_calls", max_calls)) if v is not None}
    config = HarnessConfig.build(config, **given, **fields)
    seconds, max_calls, needs, path = config.seconds, config.max_calls, config.needs, config.path
    warmup, rewarm = config.warmup, config.rewarm
    timeout_s = TIMEOUT_S if config.timeout_s is None else config.timeout_s
    out: Dict[str, Any] = {}
    workers: Dict[str, List[Worker]] = {}
    copies = max(config.copies, 1)
    calls = config.calls
    plan = _round_plan(config.rounds, calls, config.min_calls)
    try:
        for key, func, kwargs in jobs:  # all started at once: they load side by side
            workers[key] = [Worker(func, kwargs, path, timeout_s) for _ in range(copies)]
        for key in list(workers):
            try:
                facts = [w.facts for w in workers[key]][0]
                out[key] = {"facts": facts}
            except JobFailed as e:
                out[key] = e
                for w in workers.pop(key):
                    w.close()
        last: Optional[str] = None
        timed: set = set()
        for bs in batch_sizes:
            for r, (least, most) in enumerate(plan):
                keys = [k for k, _, _ in jobs if k in workers and (needs is None or bs in needs.get(k, ()))]
                shift = r % max(len(keys), 1)
                for key in keys[shift:] + keys[:shift]:
                    if key not in workers:
                        continue
                    if last is not None and last != key:
                        time.sleep(SETTLE_S)
                    first = (key, bs) not in timed
                    again = (int(bs == 1) if rewarm is None else rewarm) if last not in (None, key) else 0
                    try:
                        samples = _one_round(workers[key], bs, seconds.get(bs, 0.0) / len(plan) if calls is None
                                             else 0.0, most or max_calls, least, warmup if first else again)
                    except JobFailed as e:  # a runtime that cannot run this batch: the job's result
                        out[key] = e
                        for w in workers.pop(key):
                            w.close()
                        continue
                    finally:
                        last = key
                    timed.add((key, bs))
                    out[key].setdefault(bs, []).append(samples)
                    if on_round:
                        on_round(key, bs, r, samples)
    finally:
        for ws in workers.values():
            for w in ws:
                w.close()
    return out


def _one_round(workers: List[Worker], bs: int, seconds: float, most: int, least: int, warmup: int) -> Samples:
    for w in workers:  # every copy asked before any answer is read: they time at once
        w.request_round(bs, seconds, most, least, warmup)
    got = [w.receive_round() for w in workers]
    if len(got) == 1:
        return got[0]
    return {"wall_ms": [v for g in got for v in g["wall_ms"]], "cpu_ms": [v for g in got for v in g["cpu_ms"]],
            "per_copy": got}


def combine(rounds_ms: Sequence[Sequence[float]]) -> Dict[str, Any]:
    """One figure from several rounds of per-call times (ms): median, p10/p90, min, max, mean over all
    calls; every round's median; round_spread, the 75th over the 25th percentile of the round medians (how
    far the machine drifted, robust to one round caught in a slow stretch); unsteady, that spread above
    UNSTEADY_ROUNDS."""
    calls = np.concatenate([np.asarray(r, dtype=np.float64) for r in rounds_ms if len(r)])
    medians = [float(np.median(r)) for r in rounds_ms if len(r)]
    spread = _quartile_ratio(medians)
    return {"n": int(calls.size), "median_ms": float(np.median(calls)), "mean_ms": float(calls.mean()),
            "p10_ms": float(np.percentile(calls, 10)), "p90_ms": float(np.percentile(calls, 90)),
            "min_ms": float(calls.min()), "max_ms": float(calls.max()), "rounds": len(medians),
            "round_medians_ms": [round(m, 3) for m in medians], "round_spread": spread,
            "unsteady": bool(spread and spread > UNSTEADY_ROUNDS)}


def wall_rounds(rounds: Sequence[Samples], copy: Optional[int] = None) -> List[List[float]]:
    """The per-call wall ms of each round (of one copy's worker when `copy` is given)."""
    if copy is None:
        return [list(r["wall_ms"]) for r in rounds]
    return [list(r["per_copy"][copy]["wall_ms"] if "per_copy" in r else r["wall_ms"]) for r in rounds]


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
        return f"the machine's speed drifted: round medians {lo:.3g}-{hi:.3g} ms, the middle half {spread:.2f}x apart"
    return None


def sleep_job(ms: float):
    """A worker whose call sleeps `ms` milliseconds x batch size: a known duration to check the harness against."""
    return (lambda batch_size: (lambda: time.sleep(ms * batch_size / 1000.0))), {"backend": "sleep", "ms": ms}


# --------------------------------------------------------------------------- the worker's side


def _time_calls(fn: Callable[[], Any], seconds: float, max_calls: int, min_calls: int,
                warmup: int) -> Dict[str, List[float]]:
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


def _error(e: BaseException) -> Dict[str, Any]:
    errors = sys.modules.get("lowformer.core.errors")  # imported only if the worker's code did
    user = errors is not None and isinstance(e, errors.LowformerError)
    return {"type": type(e).__name__, "message": str(e), "exit_code": e.exit_code if user else None}


def _serve() -> int:
    """The worker's side: load (first request), then one round of timed calls per request."""
    # Replies go to the pipe on a private descriptor; fd 1 (and sys.stdout) point at stderr, so no
    # print and no native library writing to stdout can break the protocol.
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(doc: Dict[str, Any]) -> None:
        replies.write(json.dumps(doc, default=str) + "\n")
        replies.flush()

    call_for: Optional[Callable[[int], Callable[[], Any]]] = None
    calls: Dict[int, Callable[[], Any]] = {}
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if call_for is None:
                sys.path[:0] = [p for p in req.get("path", []) if p not in sys.path]
                module, _, name = req["func"].partition(":")
                call_for, facts = getattr(importlib.import_module(module), name)(**req["kwargs"])
                doc: Dict[str, Any] = {"facts": facts}
            else:
                bs = int(req["batch_size"])
                if bs not in calls:
                    calls = {bs: call_for(bs)}  # one batch size's input held at a time
                doc = _time_calls(calls[bs], float(req["seconds"]), int(req["max_calls"]), int(req["min_calls"]),
                                  int(req["warmup"]))
        except Exception as e:  # the parent records it as the job's result
            reply({"error": _error(e)})
            return 1
        reply(doc)
    return 0
