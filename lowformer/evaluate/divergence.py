"""explain's consumer: the reference with forward hooks on its block modules, every artifact with its
block boundaries exposed (Backend.open_boundaries), and per artifact the error sums of each block
output against the reference's, over the whole pass."""
from __future__ import annotations

import datetime as _dt
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from lowformer.compare import finite_or_none, nonfinite_rows
from lowformer.evaluate.data import Batch
from lowformer.evaluate.tally import SQNR_CAP_DB, BlockTally, sqnr


class ReferenceTaps:
    """Forward hooks on the reference's block modules: each block's output for the current batch.
    `stem` (the modules before the first numbered block) is read as the input of that block."""

    def __init__(self, model, blocks: Sequence[str]):
        self.model, self.out, self.hooks = model, {}, []
        for i, b in enumerate(blocks):
            if b == "head":
                continue
            if b == "stem":
                nxt = blocks[i + 1] if i + 1 < len(blocks) else "head"
                if nxt == "head":
                    continue
                mod = model.get_submodule(nxt)
                self.hooks.append(mod.register_forward_pre_hook(
                    lambda m, inp, b=b: self.out.__setitem__(b, _first_tensor(inp))))
            else:
                mod = model.get_submodule(b)
                self.hooks.append(mod.register_forward_hook(
                    lambda m, inp, outp, b=b: self.out.__setitem__(b, _first_tensor(outp))))

    def run(self, x) -> Dict[str, np.ndarray]:
        import torch

        self.out = {}
        with torch.no_grad():
            logits = self.model(x)
        out = {b: t.detach().float().cpu().numpy() for b, t in self.out.items() if t is not None}
        out["head"] = logits.detach().float().cpu().numpy()
        return out

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []


def _first_tensor(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        return next((v for v in value if isinstance(v, torch.Tensor)), None)
    return None


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """max |a - b|, NaN/Inf equal where both hold the same; None when they differ there."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.abs(a - b)
    d[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0
    return finite_or_none(float(d.max())) if d.size else 0.0


class BlockSums:
    """One artifact's running sums over the pass: per block (`blocks`, `head` = the logits), top-1 of
    both sides, the flipped images with each one's per-block SQNR, NaN/Inf counts."""

    def __init__(self, blocks: Sequence[str]):
        self.blocks = list(blocks)
        self.tally = {b: BlockTally() for b in self.blocks}
        self.flips: List[Dict[str, Any]] = []
        self.flip_sqnr: List[List[float]] = []
        self.correct = self.ref_correct = self.n = 0
        self.shape_mismatch: set = set()
        self.logits_vs_artifact: Optional[float] = None
        self.nonfinite: Dict[str, Dict[str, int]] = {}  # block -> images with NaN/Inf, per side
        # each batch's additions to the block sums, in pass order: shards' sums replay them (`merged`)
        self.parts: List[Dict[str, List[float]]] = []

    def add(self, ref: Dict[str, np.ndarray], art: Dict[str, np.ndarray], labels: np.ndarray,
            paths: Sequence[str]) -> None:
        n = len(labels)
        per_image = np.full((len(self.blocks), n), SQNR_CAP_DB)
        part: Dict[str, List[float]] = {}
        self.parts.append(part)
        for k, b in enumerate(self.blocks):
            if b in self.shape_mismatch or b not in ref or b not in art:
                continue
            r, a = ref[b], art[b]
            if r.shape != a.shape:
                self.shape_mismatch.add(b)
                continue
            r = r.reshape(n, -1)
            a = a.reshape(n, -1)
            r_bad, a_bad = nonfinite_rows(r)[0], nonfinite_rows(a)[0]
            keep = ~(r_bad | a_bad)
            if not keep.all():  # NaN/Inf: no metric for this block, its images at the SQNR floor
                counts = self.nonfinite.setdefault(b, {"reference": 0, "artifact": 0})
                counts["reference"] += int(r_bad.sum())
                counts["artifact"] += int(a_bad.sum())
                per_image[k][~keep] = -SQNR_CAP_DB
                r, a = r[keep], a[keep]
            d = a - r
            rr = np.einsum("ij,ij->i", r, r, dtype=np.float64)
            dd = np.einsum("ij,ij->i", d, d, dtype=np.float64)
            aa = np.einsum("ij,ij->i", a, a, dtype=np.float64)
            ar = np.einsum("ij,ij->i", a, r, dtype=np.float64)
            denom = np.sqrt(aa * rr)
            cos = np.where(denom > 0, ar / np.where(denom > 0, denom, 1.0), np.where((aa == 0) & (rr == 0), 1.0, 0.0))
            part[b] = [len(r), float(cos.sum()), float(rr.sum()), float(dd.sum()),
                       float(np.abs(d).max()) if d.size else 0.0]
            self.tally[b].add(*part[b])
            per_image[k][keep] = [sqnr(x, y) for x, y in zip(rr, dd)]
        ref_pred, pred = ref["head"].argmax(1), art["head"].argmax(1)
        self.n += n
        self.correct += int((pred == labels).sum())
        self.ref_correct += int((ref_pred == labels).sum())
        for i in np.flatnonzero(ref_pred != pred):
            self.flips.append({"path": paths[i], "label": int(labels[i]), "reference": int(ref_pred[i]),
                               "artifact": int(pred[i])})
            self.flip_sqnr.append([float(v) for v in per_image[:, i]])


    def to_records(self) -> Dict[str, Any]:
        """What a shard keeps of these sums (JSON): each batch's additions, the counts, the flips."""
        return {"blocks": self.blocks, "parts": self.parts, "nonfinite": self.nonfinite, "flips": self.flips,
                "flip_sqnr": self.flip_sqnr, "n": self.n, "correct": self.correct, "ref_correct": self.ref_correct,
                "shape_mismatch": sorted(self.shape_mismatch), "logits_vs_artifact": self.logits_vs_artifact}

    @classmethod
    def merged(cls, shards: Sequence[Dict[str, Any]]) -> "BlockSums":
        """The sums of one pass from its shards' records, in pass order: each batch's additions
        replayed in the order one process made them, so the figures are that process's to the bit."""
        out = cls(shards[0]["blocks"])
        for rec in shards:
            for part in rec["parts"]:
                out.parts.append(part)
                for b, values in part.items():
                    out.tally[b].add(*values)
            for b, counts in rec["nonfinite"].items():
                mine = out.nonfinite.setdefault(b, {"reference": 0, "artifact": 0})
                for side, k in counts.items():
                    mine[side] += int(k)
            out.flips += [dict(f) for f in rec["flips"]]
            out.flip_sqnr += [list(v) for v in rec["flip_sqnr"]]
            out.n, out.correct = out.n + rec["n"], out.correct + rec["correct"]
            out.ref_correct += rec["ref_correct"]
            out.shape_mismatch |= set(rec["shape_mismatch"])
            if rec["parts"] and len(out.parts) == len(rec["parts"]):  # the pass's first batch is this shard's
                out.logits_vs_artifact = rec["logits_vs_artifact"]
        return out


class Divergence:
    """A pass consumer: on each batch the tapped reference once, then every artifact's boundary runner
    (`openers[i]()` opens it, on `open`), summed into `sums[i]` (blocks `blocks[i]`). The logits of
    each exposed artifact are compared with the unmodified artifact's on the first batch."""

    def __init__(self, ref_model: Any, ref_blocks: Sequence[str], blocks: Sequence[Sequence[str]],
                 openers: Sequence[Callable[[], Any]], threads: Optional[int] = None):
        self.ref_model, self.ref_blocks, self.openers, self.threads = ref_model, list(ref_blocks), list(openers), threads
        self.sums = [BlockSums(b) for b in blocks]
        self.taps: Optional[ReferenceTaps] = None
        self.runners: List[Any] = []  # BoundaryRunner
        self.first = True
        self.started = time.perf_counter()
        self.date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")

    def open(self) -> None:
        import torch

        self.started = time.perf_counter()
        self.date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if self.threads:
            torch.set_num_threads(self.threads)
        needed = set(b for s in self.sums for b in s.blocks)
        try:
            self.taps = ReferenceTaps(self.ref_model, [b for b in self.ref_blocks if b in needed])
            for open_ in self.openers:
                self.runners.append(open_())
        except BaseException:
            self.close()
            raise

    def consume(self, batch: Batch) -> None:
        assert self.taps is not None, "open() first"
        ref = self.taps.run(batch.x)
        xn = batch.x.numpy()
        for r, s in zip(self.runners, self.sums):
            art = r.run(xn)
            if self.first:  # exposing the boundaries must not change what the artifact computes
                s.logits_vs_artifact = max_abs_diff(art["head"], r.original_logits(xn))
            s.add(ref, art, batch.labels, batch.paths)
        self.first = False

    def status(self) -> Optional[str]:
        return None

    def close(self) -> None:
        if self.taps is not None:
            self.taps.close()
            self.taps = None
        runners, self.runners = self.runners, []
        for r in runners:
            r.close()
