"""One pass over the images: each decoded once, every consumer fed the same batches in order.

A consumer (validate's scorer, explain's block divergence) opens what it runs before the first
batch, takes each readable batch, may show a running status, and closes whatever happens.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Protocol, Sequence

from lowformer.core.progress import Progress, no_progress
from lowformer.data.preprocess import Preprocessing
from lowformer.evaluate.data import Batch, batches, readable


class Consumer(Protocol):
    def open(self) -> None: ...  # before the first batch (runners opened here are closed by `close`)
    def consume(self, batch: Batch) -> None: ...
    def status(self) -> Optional[str]: ...  # a running figure for the progress line, or None
    def close(self) -> None: ...  # always called once `open` returned


class Deferred:
    """A consumer whose failure does not end the pass: the error is kept (`error`), the consumer is
    fed nothing more, and the others go on. The one who reads its result raises `error` then."""

    def __init__(self, consumer: Any):
        self.consumer = consumer
        self.error: Optional[Exception] = None

    def open(self) -> None:
        try:
            self.consumer.open()
        except Exception as e:  # not KeyboardInterrupt: that ends the pass
            self.error = e

    def consume(self, batch: Batch) -> None:
        if self.error is None:
            try:
                self.consumer.consume(batch)
            except Exception as e:
                self.error = e

    def status(self) -> Optional[str]:
        return None if self.error is not None else self.consumer.status()

    def close(self) -> None:
        self.consumer.close()


def run_pass(samples: Sequence[Any], pre: Preprocessing, batch_size: int, workers: int,
             consumers: Sequence[Consumer], progress: Progress = no_progress, skip_bad_images: bool = False,
             description: str = "evaluating") -> List[Dict[str, str]]:
    """Decode `samples` once (`batch_size` per batch, `workers` processes) and feed every readable
    batch to each consumer in turn. Returns the unreadable images ({path, error}); without
    `skip_bad_images` the first one ends the pass (LowformerError naming it)."""
    bad: List[Dict[str, str]] = []
    opened: List[Consumer] = []
    try:
        for c in consumers:
            c.open()
            opened.append(c)
        with progress.task(description, total=len(samples)) as task:
            for x, y, idx, errors in batches(samples, pre, batch_size, workers):
                batch = readable(x, y, idx, errors, samples, bad, skip_bad_images)
                if batch is not None:
                    for c in consumers:
                        c.consume(batch)
                status = "  ".join(s for s in (c.status() for c in consumers) if s)
                task.advance(len(errors), status=status or None)
    finally:
        for c in reversed(opened):
            c.close()
    return bad
