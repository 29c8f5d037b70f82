"""Running data through models built for a fixed batch size: exact-size chunks, the last one padded."""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np


def fixed_batches(x: np.ndarray, size: int) -> Iterator[Tuple[np.ndarray, int]]:
    """(chunk of exactly `size` samples, how many of them are real) over `x`.

    The last chunk is padded by repeating its last sample: a real sample keeps activation ranges
    (calibration) and numerics in distribution, where zeros would not; padded outputs are dropped.
    """
    for start in range(0, len(x), size):
        chunk = x[start:start + size]
        n = len(chunk)
        if n < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
        yield np.ascontiguousarray(chunk), n


def run_in_fixed_batches(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, size: int) -> np.ndarray:
    """`fn` over `x` in chunks of exactly `size`; the outputs of padding samples are dropped."""
    return np.concatenate([np.asarray(fn(chunk))[:n] for chunk, n in fixed_batches(x, size)])


def run_in_fixed_batches_multi(fn: Callable[[np.ndarray], Sequence[np.ndarray]], x: np.ndarray,
                               size: Optional[int]) -> List[np.ndarray]:
    """`fn` returning several outputs per batch, over `x` in chunks of exactly `size` (None: `x` at once)."""
    if not size or len(x) == size:
        return list(fn(x))
    parts = [[np.asarray(o)[:n] for o in fn(chunk)] for chunk, n in fixed_batches(x, size)]
    return [np.concatenate(col) for col in zip(*parts)]
