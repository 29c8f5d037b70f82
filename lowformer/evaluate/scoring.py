"""validate's consumer: the reference and every artifact on each batch, their top-1/top-5 and each
artifact's parity with the reference (logit cosine and differences), image by image (`Tally`)."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from lowformer.core.errors import LowformerError
from lowformer.evaluate.data import Batch
from lowformer.evaluate.tally import Tally


class Scorer:
    """A pass consumer. `ref` and `tallies` hold the per-image records, under each image's position
    in the run's image list (`positions[i]`: that of the pass's i-th sample; default: i); `errors[i]`
    is why artifact i stopped being run (a backend failing mid-run, an output of another shape), None
    while it runs. The runners are the caller's (it loaded them and closes them)."""

    def __init__(self, ref_runner: Any, runners: Sequence[Any], ref_name: str, names: Sequence[str],
                 label_source: str, positions: Optional[Sequence[int]] = None):
        self.ref_runner, self.runners = ref_runner, list(runners)
        self.ref_name, self.names, self.label_source = ref_name, list(names), label_source
        self.positions = None if positions is None else np.asarray(positions, dtype=np.int64)
        self.ref = Tally()
        self.tallies = [Tally() for _ in self.runners]
        self.errors: List[Optional[str]] = [None] * len(self.runners)

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def status(self) -> Optional[str]:
        running = [f"{self.ref_name} {self.ref.running_pct():.1f}%"]
        running += [f"{n} {t.running_pct():.1f}%" for n, t, e in zip(self.names, self.tallies, self.errors) if not e]
        return "top-1: " + "  ".join(running)

    def consume(self, batch: Batch) -> None:
        """The reference and every artifact on one batch."""
        labels = batch.labels
        index = batch.index if self.positions is None else self.positions[batch.index]
        ref_logits = self.ref_runner.run(batch.x).numpy()
        if self.ref.count_nonfinite(ref_logits, index).any():
            self.ref.accuracy(ref_logits, labels, index)  # counted as run, compared with nothing
            return  # the caller refuses the run
        if ref_logits.shape[1] <= labels.max():
            raise LowformerError(f"the labels go up to class {labels.max()} but the model has "
                                 f"{ref_logits.shape[1]} outputs ({self.label_source})")
        self.ref.accuracy(ref_logits, labels, index)
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
            t.accuracy(out, labels, index)
            t.parity(ref_logits, out, np.flatnonzero(~t.count_nonfinite(out, index)))
