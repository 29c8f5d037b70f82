"""Which blocks to keep in float: rank by accuracy harm per millisecond of float cost, then search.

Pure functions: the evaluation of a candidate (quantize with those blocks in float, score on the
held-out split) comes in as `evaluate`, the per-block float costs as a dict, so the search runs the
same on measured figures and on figures a test writes down.

The search:
1. greedy: add blocks in harm-per-ms order until the gate holds (at most `max_steps` blocks);
2. prune: try dropping each kept block, the costliest first; keep a drop when the gate still holds;
3. harm order: the plain most-harmful-first prefixes that are estimated cheaper than the best set
   so far (prefix costs only grow, so it stops at the first that is not), pruned likewise;
so the chosen set is the cheapest (estimated) passing candidate of every one it evaluated, and never
estimated slower than the plain harm-order answer. Each candidate is one quantization + evaluation,
at most `max_evals` of them; a candidate seen before is not evaluated again.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from lowformer.core.config import Config

MIN_COST_MS = 0.001  # the floor of a float cost: harm per ms stays finite for blocks INT8 does not speed up


def block_harm(row: Mapping[str, Any]) -> float:
    """Harm of quantizing one block alone (a quantize-one row): logit cosine loss vs FP32."""
    return max(1.0 - float(row["cosine"]), 0.0)


def harm_per_ms_table(rows: Sequence[Mapping[str, Any]], float_cost: Mapping[str, float],
                      floor_ms: float = MIN_COST_MS) -> List[Dict[str, Any]]:
    """Quantize-one rows -> blocks from most to least harm per ms of float cost (ties: more harm
    first, then lower agreement, then model order). A block without a cost gets the floor."""
    table = []
    for r in rows:
        harm = block_harm(r)
        cost = max(float(float_cost.get(r["block"], floor_ms)), floor_ms)
        table.append({"block": r["block"], "harm": harm, "float_cost_ms": cost, "harm_per_ms": harm / cost,
                      "agreement": r.get("agreement"), "drop": r.get("drop")})
    table.sort(key=lambda t: (-t["harm_per_ms"], -t["harm"], t["agreement"] if t["agreement"] is not None else 1.0))
    return table


def harm_per_ms_order(rows: Sequence[Mapping[str, Any]], float_cost: Mapping[str, float],
                      floor_ms: float = MIN_COST_MS) -> List[str]:
    return [t["block"] for t in harm_per_ms_table(rows, float_cost, floor_ms)]


@dataclass
class SearchResult:
    chosen: Optional[List[str]]  # the cheapest passing set (None: no candidate met the gate)
    greedy: List[List[str]]  # the sets of the greedy phase, in order (the old `steps`)
    tried: List[Dict[str, Any]] = field(default_factory=list)
    stopped: str = ""  # why the search stopped early, if it did

    def metrics_of(self, kept: Sequence[str]) -> Optional[Dict[str, Any]]:
        key = frozenset(kept)
        return next((t for t in self.tried if frozenset(t["kept_float"]) == key), None)


@dataclass(frozen=True)
class SearchConfig(Config):
    """The budget of `search_exclusion`: `max_steps`, the most blocks kept in float (the greedy phase's
    and the harm-order prefixes' length); `max_evals`, the most candidates evaluated (None: 3 x
    `max_steps`); `base_ms`, the latency (ms) of the all-INT8 model, which a candidate's estimate adds
    its blocks' float costs to."""

    max_steps: int = 8
    max_evals: Optional[int] = None
    base_ms: float = 0.0


def search_exclusion(evaluate: Callable[[List[str]], Dict[str, Any]], gate: float, ranking: Sequence[str],
                     harm_ranking: Sequence[str], float_cost: Optional[Mapping[str, float]] = None, *,
                     initial: Optional[Dict[str, Any]] = None, config: Optional[SearchConfig] = None,
                     **fields: Any) -> SearchResult:
    """Find a cheap set of blocks to keep in float with `evaluate(kept)["drop"] <= gate` (see the
    module docstring). `float_cost` None: no latency figures, so no pruning by cost order and no
    estimates; the result is then the plain greedy answer over `ranking`. `initial`: the metrics of
    the empty set (everything INT8), already evaluated. `config`: a SearchConfig (the budget), or its
    fields as keywords (max_steps, max_evals, base_ms)."""
    config = SearchConfig.build(config, **fields)
    max_steps, base_ms = config.max_steps, config.base_ms
    max_evals = config.max_evals if config.max_evals is not None else 3 * max_steps
    cost = dict(float_cost or {})
    seen: Dict[frozenset, Dict[str, Any]] = {}
    result = SearchResult(None, [])
    evals = [0]

    def estimate(kept: Sequence[str]) -> Optional[float]:
        return base_ms + sum(cost.get(b, MIN_COST_MS) for b in kept) if float_cost is not None else None

    def record(kept: Sequence[str], metrics: Dict[str, Any], phase: str) -> Dict[str, Any]:
        est = estimate(kept)
        row = {"phase": phase, "kept_float": list(kept), "drop": metrics["drop"], "agreement": metrics["agreement"],
               "cosine": metrics["cosine"], "estimated_ms": None if est is None else round(est, 4),
               "passed": metrics["drop"] <= gate, "metrics": metrics}
        seen[frozenset(kept)] = row
        result.tried.append(row)
        return row

    def trial(kept: Sequence[str], phase: str) -> Optional[Dict[str, Any]]:
        key = frozenset(kept)
        if key in seen:
            return seen[key]
        if evals[0] >= max_evals:
            result.stopped = result.stopped or f"evaluation budget ({max_evals} candidates) spent"
            return None
        evals[0] += 1
        return record(kept, evaluate(list(kept)), phase)

    def best() -> Optional[Dict[str, Any]]:
        passing = [t for t in result.tried if t["passed"]]
        if not passing:
            return None
        return min(passing, key=lambda t: (t["estimated_ms"] if t["estimated_ms"] is not None else len(t["kept_float"]),
                                           len(t["kept_float"])))

    def prune(kept: List[str]) -> None:
        if float_cost is None:
            return
        for block in sorted(kept, key=lambda b: -cost.get(b, MIN_COST_MS)):
            if block not in kept or len(kept) <= 1:
                continue
            candidate = [b for b in kept if b != block]
            row = trial(candidate, "prune")
            if row is None:
                return
            if row["passed"]:
                kept[:] = candidate

    if initial is not None:
        record([], initial, "int8")
        if initial["drop"] <= gate:
            result.chosen = []
            return result

    kept: List[str] = []
    passed = False
    for block in list(ranking)[:max_steps]:
        kept.append(block)
        row = trial(kept, "greedy")
        if row is None:
            break
        result.greedy.append(list(kept))
        if row["passed"]:
            passed = True
            break
    if passed:
        prune(list(kept))

    if float_cost is not None and list(harm_ranking) != list(ranking):
        top = best()
        bound = top["estimated_ms"] if top else float("inf")
        prefix: List[str] = []
        for block in list(harm_ranking)[:max_steps]:
            prefix.append(block)
            if estimate(prefix) >= bound:
                break  # every longer prefix costs more still
            row = trial(list(prefix), "harm-order")
            if row is None:
                break
            if row["passed"]:
                prune(list(prefix))
                break
    top = best()
    result.chosen = list(top["kept_float"]) if top else None
    return result
