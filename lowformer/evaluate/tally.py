"""Per-image results of a pass (`Tally`: one model's records) and the figures taken from them;
error sums per block boundary tensor (`BlockTally`).

A model's results are kept image by image, each under its position in the run's image list, so
that a run's figures are the same whether its images ran in one process or in shards merged
afterwards (lowformer.evaluate.records): `Tally.finish` sorts the records by position and takes
every sum with math.fsum (exactly rounded, so independent of order and of how images were split).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from lowformer.compare import nonfinite_message, nonfinite_rows

SQNR_CAP_DB = 150.0  # an exact match (no error at all) reads as this, never as infinity (JSON)
COLUMNS = ("index", "top1", "top5", "prob", "cosine", "sq_diff", "sq_ref", "max_abs")


class Tally:
    """One model's per-image results over a run: its top-1 and top-5 classes, the softmax probability
    of its top-1 class and (an artifact) its logit cosine, squared error, squared reference norm and
    largest difference against the reference (NaN where not compared); the images whose logits hold
    NaN/Inf (`nonfinite_at`: position -> kinds). `finish(labels, paths)` takes the run's figures."""

    def __init__(self) -> None:
        self.columns: Dict[str, List[Any]] = {k: [] for k in COLUMNS}
        self.nonfinite_at: Dict[int, List[str]] = {}
        self.num_classes = 0
        self.seen = self.right = 0  # running counts for the progress line
        self._finish_empty()

    def _finish_empty(self) -> None:
        self.n = self.top1 = self.top5 = self.agree = 0
        self.cos_sum = self.max_abs = self.sq_diff = self.sq_ref = 0.0
        self.flips: List[Dict[str, Any]] = []
        self.correct: List[np.ndarray] = []  # per image, in position order: the paired statistics need them
        self.nonfinite = 0  # images whose logits hold NaN/Inf (then no parity metric is meaningful)
        self.nonfinite_kinds: List[str] = []
        self.nonfinite_first: Optional[str] = None

    # ------------------------------------------------------------------ during the pass
    def accuracy(self, logits: np.ndarray, labels: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Record the top-1/top-5 classes of a batch (images at `index`); returns the top-1 classes."""
        k = min(5, logits.shape[1])
        pred = logits.argmax(1)
        top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(logits, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, 1)
        self.num_classes = logits.shape[1]
        self.columns["index"].extend(int(i) for i in index)
        self.columns["top1"].extend(int(p) for p in pred)
        self.columns["top5"].extend(t.tolist() for t in top)
        self.columns["prob"].extend(top1_probs(logits, pred))
        for c in ("cosine", "sq_diff", "sq_ref", "max_abs"):
            self.columns[c].extend([math.nan] * len(pred))
        self.seen += len(labels)
        self.right += int((pred == labels).sum())
        return pred

    def parity(self, ref: np.ndarray, out: np.ndarray, rows: np.ndarray) -> None:
        """Record each image's logit cosine and errors against the reference, for the batch's `rows`
        (those with finite logits) of the batch just recorded by `accuracy`."""
        if not len(rows):
            return
        r = np.asarray(ref, dtype=np.float64)[rows].reshape(len(rows), -1)
        o = np.asarray(out, dtype=np.float64)[rows].reshape(len(rows), -1)
        diff = o - r
        denom = np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)
        figures = {"cosine": np.where(denom > 0, (r * o).sum(1) / np.maximum(denom, 1e-300), 1.0),
                   "sq_diff": np.square(diff).sum(1), "sq_ref": np.square(r).sum(1),
                   "max_abs": np.abs(diff).max(1, initial=0.0)}
        at = len(self.columns["index"]) - len(ref) + np.asarray(rows)
        for name, values in figures.items():
            column = self.columns[name]
            for k, v in zip(at.tolist(), values.tolist()):
                column[k] = v

    def count_nonfinite(self, logits: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Record the images of a batch whose logits hold NaN/Inf; returns the rows that do."""
        rows, _ = nonfinite_rows(logits)
        for i in np.flatnonzero(rows):
            _, kinds = nonfinite_rows(logits[i:i + 1])
            self.nonfinite_at[int(index[i])] = kinds
        return rows

    def running_pct(self) -> float:
        return 100.0 * self.right / self.seen if self.seen else 0.0

    # ------------------------------------------------------------------ after it
    def finish(self, labels: Sequence[int], paths: Sequence[str], ref: Optional["Tally"] = None) -> "Tally":
        """The figures over the recorded images (labels and paths: the run's, by position), summed in
        position order: n, top1, top5, correct; with `ref`, the parity sums and flipped images."""
        self._finish_empty()
        cols = self.columns
        order = sorted(range(len(cols["index"])), key=lambda j: cols["index"][j])
        pos = [cols["index"][j] for j in order]
        pred = np.array([cols["top1"][j] for j in order], dtype=np.int64)
        y = np.array([labels[p] for p in pos], dtype=np.int64)
        self.n = len(pos)
        correct = pred == y
        self.correct = [correct]
        self.top1 = int(correct.sum())
        self.top5 = sum(1 for j, lab in zip(order, y) if int(lab) in cols["top5"][j])
        scored = set(pos)
        bad = sorted(p for p in self.nonfinite_at if p in scored)
        self.nonfinite = len(bad)
        kinds = {k for p in bad for k in self.nonfinite_at[p]}
        self.nonfinite_kinds = [k for k in ("NaN", "+Inf", "-Inf") if k in kinds]
        self.nonfinite_first = Path(paths[bad[0]]).name if bad else None
        if ref is None or self.nonfinite:
            return self
        ref_at = {p: j for j, p in enumerate(ref.columns["index"])}
        compared = [j for j in order if not math.isnan(cols["cosine"][j])]
        self.cos_sum = math.fsum(cols["cosine"][j] for j in compared)
        self.sq_diff = math.fsum(cols["sq_diff"][j] for j in compared)
        self.sq_ref = math.fsum(cols["sq_ref"][j] for j in compared)
        self.max_abs = max((cols["max_abs"][j] for j in compared), default=0.0)
        for j, p in zip(order, pos):
            r = ref_at[p]
            ref_pred = ref.columns["top1"][r]
            if ref_pred == cols["top1"][j]:
                self.agree += 1
            else:
                self.flips.append({"path": paths[p], "label": int(labels[p]), "reference": int(ref_pred),
                                   "artifact": int(cols["top1"][j]),
                                   # softmax probability of each side's predicted class, from its own logits
                                   "reference_prob": ref.columns["prob"][r], "artifact_prob": cols["prob"][j]})
        return self

    def pct(self, v: int) -> float:
        return 100.0 * v / self.n if self.n else 0.0

    def nonfinite_failure(self, where: str) -> str:
        return (nonfinite_message(where, self.nonfinite_kinds, self.nonfinite, self.n, "image") +
                f" (first: {self.nonfinite_first})")

    # ------------------------------------------------------------------ as records
    def to_records(self) -> Dict[str, Any]:
        """The per-image columns as JSON (NaN: null), with the images whose logits hold NaN/Inf."""
        out: Dict[str, Any] = {k: [None if isinstance(v, float) and math.isnan(v) else v for v in vals]
                               for k, vals in self.columns.items()}
        out["nonfinite"] = {str(p): kinds for p, kinds in sorted(self.nonfinite_at.items())}
        out["num_classes"] = self.num_classes
        return out

    @classmethod
    def from_records(cls, records: Dict[str, Any]) -> "Tally":
        t = cls()
        for k in COLUMNS:
            t.columns[k] = [math.nan if v is None else v for v in records[k]]
        t.nonfinite_at = {int(p): list(kinds) for p, kinds in records.get("nonfinite", {}).items()}
        t.num_classes = int(records.get("num_classes", 0))
        return t

    @classmethod
    def merged(cls, parts: Sequence["Tally"]) -> "Tally":
        """The records of several shards as one tally."""
        t = cls()
        for part in parts:
            for k in COLUMNS:
                t.columns[k].extend(part.columns[k])
            t.nonfinite_at.update(part.nonfinite_at)
            t.num_classes = t.num_classes or part.num_classes
        return t


def top1_probs(logits: np.ndarray, pred: np.ndarray) -> List[float]:
    """Each row's softmax probability of its class in `pred` (stable: max subtracted), 4 digits."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    with np.errstate(invalid="ignore"):  # rows with NaN/Inf: NaN, recorded as such
        return [round(p, 4) for p in (e[np.arange(len(z)), pred] / e.sum(1)).tolist()]


@dataclass
class BlockTally:
    """One block's error sums over the images: cosine (summed per image), |ref|^2, |artifact - ref|^2,
    max |artifact - ref|."""

    n: int = 0
    cos_sum: float = 0.0
    sq_ref: float = 0.0
    sq_diff: float = 0.0
    max_abs: float = 0.0

    def sqnr_db(self) -> float:
        return sqnr(self.sq_ref, self.sq_diff)

    def add(self, n: int, cos_sum: float, sq_ref: float, sq_diff: float, max_abs: float) -> None:
        """One batch's sums (in pass order: float additions in the order one process makes them)."""
        self.n += int(n)
        self.cos_sum += cos_sum
        self.sq_ref += sq_ref
        self.sq_diff += sq_diff
        self.max_abs = max(self.max_abs, max_abs)


def sqnr(sq_ref: float, sq_diff: float) -> float:
    """10 log10(|ref|^2 / |diff|^2) in dB, within +-SQNR_CAP_DB (an exact match reads as the cap)."""
    if sq_diff <= 0.0:
        return SQNR_CAP_DB
    if sq_ref <= 0.0:
        return -SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, max(-SQNR_CAP_DB, 10.0 * math.log10(sq_ref / sq_diff))))
