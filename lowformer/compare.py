"""Comparators for logits (kept apart from the runners that produce them)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

# Per-precision parity thresholds of the export check (on a fixed batch of inputs).
PARITY_THRESHOLDS: Dict[str, Dict[str, float]] = {
    "fp32": {"max_rel_l2": 1e-4},
    "fp16": {"min_cosine": 0.999},
    # Measured: EfficientNet-Lite0 (real weights), INT8 cpu target, percentile: cosine 0.979 on the
    # parity batch and 0.978 on 1,044 ImageNet images with top-1 only 0.6 pt below FP32; broken
    # quantizations measured 0.93 (saturating 8-bit weights) and 0.80-0.85 (entropy ranges).
    "int8": {"min_cosine": 0.96},
}


@dataclass
class LogitComparison:
    max_abs: float
    rel_l2: float
    cosine: float  # mean over samples
    top1_agreement: float
    n: int

    def to_dict(self) -> Dict[str, float]:
        return asdict(self)


def nonfinite(values: np.ndarray, where: str, inputs: str = "input", what: str = "logits") -> Optional[str]:
    """None when every value is finite; else one sentence naming `where` the NaN/Inf appeared, what
    kind and on how many of the `inputs` (the first axis), e.g. "the artifact model.onnx gave
    non-finite logits (NaN) on 4 of 4 inputs". The one check every comparison shares: NaN compares
    false with everything, so a metric computed from it passes or fails by accident."""
    rows, kinds = nonfinite_rows(values)
    if not kinds:
        return None
    return nonfinite_message(where, kinds, int(rows.sum()), len(rows), inputs, what)


def nonfinite_rows(values: np.ndarray) -> Tuple[np.ndarray, List[str]]:
    """(per input along the first axis: whether it holds NaN/Inf, the kinds present: NaN, +Inf, -Inf)."""
    a = np.asarray(values, dtype=np.float64)
    a = a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)
    rows = ~np.isfinite(a).all(1)
    if not rows.any():
        return rows, []
    kinds = [k for k, hit in (("NaN", np.isnan(a).any()), ("+Inf", np.isposinf(a).any()),
                              ("-Inf", np.isneginf(a).any())) if hit]
    return rows, kinds


def nonfinite_message(where: str, kinds: Sequence[str], bad: int, n: int, inputs: str = "input",
                      what: str = "logits") -> str:
    return f"{where} gave non-finite {what} ({', '.join(kinds)}) on {bad} of {n} {inputs}{'s' if n != 1 else ''}"


def require_finite(values: np.ndarray, where: str, inputs: str = "input", what: str = "logits") -> None:
    """Raise one LowformerError line when `values` hold NaN or Inf (see `nonfinite`)."""
    msg = nonfinite(values, where, inputs, what)
    if msg:
        from lowformer.core.errors import LowformerError

        raise LowformerError(msg)


def finite_or_none(value: Optional[float]) -> Optional[float]:
    """A metric for a record: None (JSON null) instead of NaN/Inf."""
    return None if value is None or not np.isfinite(value) else float(value)


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> LogitComparison:
    """Metrics of `candidate` against `reference`. Check both with `nonfinite` first: with NaN or
    Inf in either, these metrics are meaningless (NaN cosine, NaN argmax to class 0)."""
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    out = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    if ref.shape != out.shape:
        raise ValueError(f"logit shapes differ: {ref.shape} vs {out.shape}")
    diff = out - ref
    denom = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = np.where(denom > 0, (ref * out).sum(1) / np.maximum(denom, 1e-300), 1.0)
    return LogitComparison(
        max_abs=float(np.abs(diff).max(initial=0.0)),
        rel_l2=float(np.linalg.norm(diff) / max(np.linalg.norm(ref), 1e-300)),
        cosine=float(cos.mean()),
        top1_agreement=float((ref.argmax(1) == out.argmax(1)).mean()),
        n=len(ref),
    )


def parity_passes(cmp: LogitComparison, precision: str,
                  thresholds: Optional[Dict[str, float]] = None) -> bool:
    t = thresholds or PARITY_THRESHOLDS.get(precision, {})
    ok = True
    if "max_rel_l2" in t:
        ok &= cmp.rel_l2 <= t["max_rel_l2"]
    if "min_cosine" in t:
        ok &= cmp.cosine >= t["min_cosine"]
    return bool(ok)


# --------------------------------------------------------------------------- is a drop real?

def paired_bootstrap_delta(ref_correct: np.ndarray, art_correct: np.ndarray, n_boot: int = 2000,
                           level: float = 0.95, seed: int = 0) -> Tuple[float, float]:
    """Percentile interval of the top-1 delta (artifact minus reference, in points), resampling
    images with their pair of outcomes (the same images ran through both models)."""
    ref = np.asarray(ref_correct, dtype=np.float64)
    art = np.asarray(art_correct, dtype=np.float64)
    if ref.shape != art.shape or ref.size == 0:
        raise ValueError("paired outcomes of the same, non-empty set of images are needed")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, ref.size, size=(n_boot, ref.size))
    deltas = (art[idx].mean(1) - ref[idx].mean(1)) * 100.0
    lo, hi = np.percentile(deltas, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def mcnemar_exact(ref_only: int, art_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs: images only the reference got
    right, and images only the artifact got right (a binomial test of the split at 1/2)."""
    from scipy.stats import binomtest

    n = int(ref_only) + int(art_only)
    return 1.0 if n == 0 else float(binomtest(int(ref_only), n, 0.5).pvalue)


def drop_decision(interval: Tuple[float, float], max_drop: Optional[float]) -> str:
    """Whether the data set is large enough to decide a top-1 drop gate, in one sentence."""
    lo, hi = interval
    span = f"[{lo:+.2f}, {hi:+.2f}] pt"
    if max_drop is None:
        return f"95% interval of the top-1 delta {span} (no drop gate)"
    if lo >= -max_drop:
        return f"the interval {span} is within the {max_drop:g} pt gate: the gate holds"
    if hi < -max_drop:
        return f"the interval {span} is beyond the {max_drop:g} pt gate: the drop is real"
    return f"the interval {span} contains the {max_drop:g} pt gate: use more images to decide"
