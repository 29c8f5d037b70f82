"""Activation ranges from collected histograms, for each calibration method.

One histogram per tensor (ONNX Runtime's `HistogramCollector.collect_value` layout: `n` bins
symmetric around zero over [-threshold, threshold], plus the exact min and max) serves every method,
so switching methods never re-runs the model:

- minmax: the exact min and max;
- entropy: ONNX Runtime's KL-divergence threshold search (TensorRT's algorithm), vectorised here
  because ORT's pure-Python loops take seconds per tensor at 2048 bins (same result, tested);
- percentile: ONNX Runtime's own `compute_percentile` on the histogram of |x| (folded from ours).
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

METHODS = ("entropy", "minmax", "percentile")
NUM_QUANTIZED_BINS = 128
PERCENTILE = 99.999


@dataclass
class TensorHistogram:
    hist: np.ndarray  # int64 counts, even length, symmetric around zero
    threshold: float  # bins cover [-threshold, threshold]
    min: float
    max: float

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(-self.threshold, self.threshold, len(self.hist) + 1, dtype=np.float32)

    def to_json(self) -> Dict[str, object]:
        return {"min": float(self.min), "max": float(self.max), "threshold": float(self.threshold),
                "hist": [int(v) for v in self.hist]}

    @classmethod
    def from_json(cls, d: Dict[str, object]) -> "TensorHistogram":
        return cls(np.asarray(d["hist"], dtype=np.int64), float(d["threshold"]), float(d["min"]), float(d["max"]))

    @classmethod
    def from_collector(cls, entry: tuple) -> "TensorHistogram":
        hist, _edges, lo, hi, threshold = entry
        return cls(np.asarray(hist, dtype=np.int64), float(threshold), float(lo), float(hi))


def rebin(h: TensorHistogram, max_bins: int) -> TensorHistogram:
    """Merge neighbouring bins (symmetrically) until at most `max_bins` remain; keeps the layout."""
    n = len(h.hist)
    if n <= max_bins:
        return h
    k = -(-n // max_bins)
    half = n // 2
    pad = (-half) % k  # grow each half outward to a multiple of k
    neg, pos = h.hist[:half][::-1], h.hist[half:]
    neg = np.concatenate([neg, np.zeros(pad, np.int64)]).reshape(-1, k).sum(1)[::-1]
    pos = np.concatenate([pos, np.zeros(pad, np.int64)]).reshape(-1, k).sum(1)
    stride = 2 * h.threshold / n
    return TensorHistogram(np.concatenate([neg, pos]), h.threshold + pad * stride, h.min, h.max)


def _smooth(p: np.ndarray, eps: float = 0.0001):
    # onnxruntime.quantization.quant_utils.smooth_distribution, row-wise.
    zeros = p == 0
    n_zeros = zeros.sum(axis=-1, keepdims=True).astype(np.float32)
    n_nonzeros = p.shape[-1] - n_zeros
    eps1 = eps * n_zeros / np.maximum(n_nonzeros, 1)
    out = p.astype(np.float32) + np.where(zeros, np.float32(eps), -eps1.astype(np.float32))
    return out, (n_nonzeros[..., 0] > 0)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    # onnxruntime.quantization.calibrate.entropy (scipy's rel_entr sum), float32 as ORT computes it.
    p = p / p.sum()
    q = q / q.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        v = p * np.log(p / q)
    v[(p == 0) & (q >= 0)] = 0
    v[~((p > 0) & (q > 0))] = np.inf
    return float(np.float32(v.sum()))


def entropy_threshold(h: TensorHistogram, num_quantized_bins: int = NUM_QUANTIZED_BINS) -> Tuple[float, float]:
    """ONNX Runtime's `HistogramCollector.get_entropy_threshold`, with the inner loops vectorised."""
    hist, edges = h.hist, h.edges
    num_bins = hist.size
    zero = num_bins // 2
    half_q = num_quantized_bins // 2
    cums = np.concatenate([[0], np.cumsum(hist)])
    best, best_div = None, np.inf
    for i in range(half_q, zero + 1):
        start, end = zero - i, min(zero + i + 1, num_bins)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += cums[start]
        p[-1] += cums[-1] - cums[end]
        nonzeros = (p != 0).astype(np.int64)
        m = sliced.size // num_quantized_bins
        body = num_quantized_bins * m
        qbins = sliced[:body].reshape(num_quantized_bins, m).sum(1)
        qbins[-1] += sliced[body:].sum()
        norm = nonzeros[:body].reshape(num_quantized_bins, m).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            per = np.where(norm != 0, qbins / np.maximum(norm, 1), 0)
        q = np.zeros(p.size, dtype=np.int64)
        q[:body] = np.repeat(per, m).astype(np.int64)  # ORT assigns into an int64 array: truncation
        ps, okp = _smooth(p)
        qs, okq = _smooth(q)
        div = _kl(ps, qs) if (okp and okq) else np.inf
        if best is None or div < best_div:  # np.argmin: the first minimum wins
            best, best_div = (edges[start], edges[end]), div
    lo, hi = float(best[0]), float(best[1])
    return max(lo, h.min), min(hi, h.max)


def percentile_range(h: TensorHistogram, percentile: float = PERCENTILE) -> Tuple[float, float]:
    """ONNX Runtime's symmetric percentile (its default) on the |x| histogram folded from ours."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    half = len(h.hist) // 2
    abs_hist = h.hist[half:] + h.hist[:half][::-1]
    abs_edges = h.edges[half:]
    collector = HistogramCollector("percentile", True, len(abs_hist), NUM_QUANTIZED_BINS, percentile, "same")
    collector.histogram_dict = {"t": (abs_hist, abs_edges, np.float32(h.min), np.float32(h.max))}
    with contextlib.redirect_stdout(io.StringIO()):  # ORT prints progress to stdout
        lo, hi = collector.compute_percentile()["t"][:2]
    return float(lo), float(hi)


def compute_range(h: TensorHistogram, method: str) -> Tuple[float, float]:
    if method == "minmax":
        return h.min, h.max
    if h.threshold == 0 or h.hist.sum() == 0:
        return h.min, h.max  # a constant tensor
    if method == "entropy":
        return entropy_threshold(h)
    if method == "percentile":
        return percentile_range(h)
    raise ValueError(f"unknown calibration method {method!r}")
