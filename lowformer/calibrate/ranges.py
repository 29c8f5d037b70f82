"""Activation ranges from collected histograms, for each calibration method.

One histogram per tensor (ONNX Runtime's `HistogramCollector.collect_value` layout: `n` bins
symmetric around zero over [-threshold, threshold], plus the exact min and max) serves every method,
so switching methods never re-runs the model:

- minmax: the exact min and max;
- entropy: ONNX Runtime's KL-divergence threshold search (TensorRT's algorithm), vectorised here
  because ORT's pure-Python loops take seconds per tensor at 2048 bins (same result, tested), on the
  histogram with the bin that holds zero set to its neighbour's count, as NVIDIA's own entropy
  calibrator does (pytorch-quantization / ModelOpt `_compute_amax_entropy`: `bins[0] = bins[1]`).
  Zero is exact in symmetric int8, but ORT's search spreads a ReLU6 output's spike of zeros (21-80 %
  of EfficientNet-Lite0's) over the fine bins of one quantized bin and then picks the smallest
  threshold it can: 19 of its 32 ReLU6 outputs were clipped at 2.3-5.3 instead of 6: `--target
  tensorrt` top-1 81.32 % before, 84.48 % now (FP32 84.00 %; docs/measurements.md);
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


def _smooth_rows(p: np.ndarray, valid: np.ndarray, eps: float = 0.0001):
    """onnxruntime.quantization.quant_utils.smooth_distribution on each row's valid entries."""
    zeros = (p == 0) & valid
    n_zeros = zeros.sum(1, keepdims=True).astype(np.float32)
    n_nonzeros = valid.sum(1, keepdims=True) - n_zeros
    eps1 = (eps * n_zeros / np.maximum(n_nonzeros, 1)).astype(np.float32)
    out = p.astype(np.float32) + np.where(zeros, np.float32(eps), -eps1)
    return np.where(valid, out, 0).astype(np.float32), n_nonzeros[:, 0] > 0


def entropy_threshold(h: TensorHistogram, num_quantized_bins: int = NUM_QUANTIZED_BINS,
                      chunk: int = 64) -> Tuple[float, float]:
    """ONNX Runtime's `HistogramCollector.get_entropy_threshold` (KL divergence between the clipped
    reference distribution and its 128-level quantization), candidates evaluated 64 at a time, on the
    histogram with the zero bin's count replaced by its neighbour's (the module's docstring says why)."""
    hist, edges = h.hist.astype(np.int64).copy(), h.edges
    n, nq = hist.size, num_quantized_bins
    zero, half_q = n // 2, nq // 2
    if zero + 1 < n:
        hist[zero] = hist[zero + 1]  # the zero spike (ReLU outputs) is exact in int8: not a cost of clipping
    if zero < half_q:
        return h.min, h.max  # fewer bins than quantization levels: nothing to clip
    cums = np.concatenate([[0], np.cumsum(hist)])
    best_i, best_div = half_q, np.inf
    for first in range(half_q, zero + 1, chunk):
        cand = np.arange(first, min(first + chunk, zero + 1))
        rows = np.arange(len(cand))[:, None]
        start = zero - cand
        end = np.minimum(zero + cand + 1, n)
        length = end - start
        k = np.arange(length.max())[None, :]
        valid = k < length[:, None]
        sliced = np.where(valid, hist[np.minimum(start[:, None] + k, n - 1)], 0)
        p = sliced.copy()
        p[:, 0] += cums[start]  # outliers fold into the edge bins
        p[rows[:, 0], length - 1] += cums[n] - cums[end]
        m = (length // nq)[:, None]  # source bins per quantized bin
        in_body = valid & (k < nq * m)
        group = np.minimum(k // m, nq - 1)  # the tail past nq*m joins the last quantized bin
        flat = (rows * nq + group)[valid]
        qbins = np.bincount(flat, weights=sliced[valid], minlength=len(cand) * nq).reshape(-1, nq)
        norm = np.bincount((rows * nq + group)[in_body], weights=(p != 0)[in_body],
                           minlength=len(cand) * nq).reshape(-1, nq)
        with np.errstate(divide="ignore", invalid="ignore"):
            per = np.where(norm != 0, qbins / norm, 0)
        q = np.where(in_body, np.trunc(per[rows, group]), 0).astype(np.int64)  # ORT stores into int64
        ps, okp = _smooth_rows(p, valid)
        qs, okq = _smooth_rows(q, valid)
        ps /= ps.sum(1, keepdims=True)
        qs /= np.where(okq, qs.sum(1), 1)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(valid, ps * np.log(ps / qs), 0)
            bad = valid & ~((ps > 0) & (qs > 0))
        div = np.where(bad.any(1) | ~okp | ~okq, np.inf, terms.sum(1, dtype=np.float32))
        j = int(np.argmin(div))
        if div[j] < best_div:  # np.argmin semantics: the first minimum wins
            best_i, best_div = int(cand[j]), float(div[j])
    start, end = zero - best_i, min(zero + best_i + 1, n)
    lo, hi = float(edges[start]), float(edges[end])
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
