"""Which images a shard of a run scores, and in which order a pass runs them.

A pass runs its images in a class-interleaved order (one image of each class per round, classes by
label, images in path order) and cuts it into batches; shard K of N is the K-th N-th of those whole
batches. So every shard holds every class alike (class-stratified), and every image runs in the
same batch, with the same neighbours, as in one process over all of them: the per-image logits
(and so every figure of the merged report) are those of the one-process run, on any runtime whose
result for an image depends only on its batch.
"""
from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

from lowformer.core.errors import LowformerError


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`."""

    index: int = 1
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise LowformerError(f"shard {self.index}/{self.count}: K/N needs 1 <= K <= N")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """`K/N`, e.g. 2/3."""
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
        if not m:
            raise LowformerError(f"--shard takes K/N (e.g. 2/3 for the second of three), not {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    @classmethod
    def from_torchrun(cls) -> Optional["Shard"]:
        """This process's shard under torchrun (RANK of WORLD_SIZE), None when not launched by it."""
        world = os.environ.get("WORLD_SIZE")
        if world is None or os.environ.get("RANK") is None:
            return None
        return cls(int(os.environ["RANK"]) + 1, int(world))

    @property
    def whole(self) -> bool:
        return self.count == 1

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def pass_order(samples: Sequence[Any]) -> List[int]:
    """Positions of `samples` (Sample(path, label), in path order) in the order a pass runs them:
    round r holds the r-th image of every class, classes by label."""
    seen: defaultdict = defaultdict(int)
    keys = []
    for i, s in enumerate(samples):
        keys.append((seen[s.label], s.label, i))
        seen[s.label] += 1
    return [i for *_, i in sorted(keys)]


def shard_positions(samples: Sequence[Any], batch_size: int, shard: Shard) -> List[int]:
    """The positions (in `samples`) shard `shard` runs, in pass order: its share of whole batches."""
    order = pass_order(samples)
    batches = -(-len(order) // batch_size)
    lo, hi = batches * (shard.index - 1) // shard.count, batches * shard.index // shard.count
    return order[lo * batch_size:hi * batch_size]
