"""Running sums over the batches of a pass: accuracy and logit parity per model (`Tally`), error
sums per block boundary tensor (`BlockTally`); ratios are taken of whole-pass sums, never means of
per-batch ratios."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from lowformer.compare import compare_logits, nonfinite_message, nonfinite_rows

SQNR_CAP_DB = 150.0  # an exact match (no error at all) reads as this, never as infinity (JSON)


class Tally:
    """Running accuracy and (for artifacts) parity with the reference, over batches."""

    def __init__(self) -> None:
        self.n = self.top1 = self.top5 = self.agree = 0
        self.cos_sum = self.max_abs = self.sq_diff = self.sq_ref = 0.0
        self.flips: List[Dict[str, Any]] = []
        self.num_classes = 0
        self.correct: List[np.ndarray] = []  # per image, in order: the paired statistics need them
        self.nonfinite = 0  # images whose logits hold NaN/Inf (then no parity metric is meaningful)
        self.nonfinite_kinds: List[str] = []
        self.nonfinite_first: Optional[str] = None

    def accuracy(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        k = min(5, logits.shape[1])
        pred = logits.argmax(1)
        topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
        self.n += len(labels)
        self.top1 += int((pred == labels).sum())
        self.correct.append(pred == labels)
        self.top5 += int((topk == labels[:, None]).any(1).sum())
        return pred

    def parity(self, ref: np.ndarray, out: np.ndarray, ref_pred: np.ndarray, pred: np.ndarray,
               labels: np.ndarray, paths: Sequence[str]) -> None:
        cmp = compare_logits(ref, out)
        self.cos_sum += cmp.cosine * cmp.n
        self.max_abs = max(self.max_abs, cmp.max_abs)
        self.sq_diff += float(np.square(out.astype(np.float64) - ref).sum())
        self.sq_ref += float(np.square(ref.astype(np.float64)).sum())
        same = ref_pred == pred
        self.agree += int(same.sum())
        for i in np.flatnonzero(~same):
            self.flips.append({"path": paths[i], "label": int(labels[i]), "reference": int(ref_pred[i]),
                               "artifact": int(pred[i]),
                               # softmax probability of each side's predicted class, from its own logits
                               "reference_prob": prob(ref[i], int(ref_pred[i])),
                               "artifact_prob": prob(out[i], int(pred[i]))})

    def pct(self, v: int) -> float:
        return 100.0 * v / self.n if self.n else 0.0

    def count_nonfinite(self, logits: np.ndarray, paths: Sequence[str]) -> bool:
        """Count the images whose logits hold NaN/Inf; whether this batch had any."""
        rows, kinds = nonfinite_rows(logits)
        if not kinds:
            return False
        self.nonfinite += int(rows.sum())
        self.nonfinite_kinds = [k for k in ("NaN", "+Inf", "-Inf") if k in kinds or k in self.nonfinite_kinds]
        self.nonfinite_first = self.nonfinite_first or Path(paths[int(np.flatnonzero(rows)[0])]).name
        return True

    def nonfinite_failure(self, where: str) -> str:
        return (nonfinite_message(where, self.nonfinite_kinds, self.nonfinite, self.n, "image") +
                f" (first: {self.nonfinite_first})")


def prob(logits: np.ndarray, cls: int) -> float:
    """Softmax probability of class `cls` from one image's logits (stable: max subtracted), 4 digits."""
    z = logits.astype(np.float64)
    e = np.exp(z - z.max())
    return round(float(e[cls] / e.sum()), 4)


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


def sqnr(sq_ref: float, sq_diff: float) -> float:
    """10 log10(|ref|^2 / |diff|^2) in dB, within +-SQNR_CAP_DB (an exact match reads as the cap)."""
    if sq_diff <= 0.0:
        return SQNR_CAP_DB
    if sq_ref <= 0.0:
        return -SQNR_CAP_DB
    return float(min(SQNR_CAP_DB, max(-SQNR_CAP_DB, 10.0 * math.log10(sq_ref / sq_diff))))
