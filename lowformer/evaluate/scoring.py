"""validate's consumer: the reference and every artifact on each batch, their top-1/top-5 and each
artifact's parity with the reference (agreement, logit cosine and differences, flipped images)."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from lowformer.core.errors import LowformerError
from lowformer.evaluate.data import Batch
from lowformer.evaluate.tally import Tally


class Scorer:
    """A pass consumer. `ref` and `tallies` hold the sums; `errors[i]` is why artifact i stopped being
    run (a backend failing mid-run, an output of another shape), None while it runs. The runners are
    the caller's (it loaded them and closes them)."""

    def __init__(self, ref_runner: Any, runners: Sequence[Any], ref_name: str, names: Sequence[str],
                 label_source: str):
        self.ref_runner, self.runners = ref_runner, list(runners)
        self.ref_name, self.names, self.label_source = ref_name, list(names), label_source
        self.ref = Tally()
        self.tallies = [Tally() for _ in self.runners]
        self.errors: List[Optional[str]] = [None] * len(self.runners)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def status(self) -> Optional[str]:
        running = [f"{self.ref_name} {self.ref.pct(self.ref.top1):.1f}%"]
        running += [f"{n} {t.pct(t.top1):.1f}%" for n, t, e in zip(self.names, self.tallies, self.errors) if not e]
        return "top-1: " + "  ".join(running)

    def consume(self, batch: Batch) -> None:
        """The reference and every artifact on one batch."""
        labels, paths = batch.labels, batch.paths
        ref_logits = self.ref_runner.run(batch.x).numpy()
        if self.ref.count_nonfinite(ref_logits, paths):
            self.ref.n += len(labels)  # counted as run, compared with nothing (the caller refuses the run)
            return
        if ref_logits.shape[1] <= labels.max():
            raise LowformerError(f"the labels go up to class {labels.max()} but the model has "
                                 f"{ref_logits.shape[1]} outputs ({self.label_source})")
        ref_pred = self.ref.accuracy(ref_logits, labels)
        self.ref.num_classes = ref_logits.shape[1]
        xn = batch.x.numpy()
        for i, (r, t) in enumerate(zip(self.runners, self.tallies)):
            if self.errors[i]:
                continue
            try:
                out = np.asarray(r.run(xn), dtype=np.float32)  # fixed-batch artifacts run in chunks
            except Exception as e:  # a backend failing mid-run fails that artifact, not the run
                self.errors[i] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                continue
            if out.shape != ref_logits.shape:
                self.errors[i] = f"output shape {tuple(out.shape)} differs from the reference {tuple(ref_logits.shape)}"
                continue
            pred = t.accuracy(out, labels)
            if not t.count_nonfinite(out, paths) and not t.nonfinite:
                t.parity(ref_logits, out, ref_pred, pred, labels, paths)
