"""A run split over the ranks of `torchrun`: each rank scores its shard, the ranks exchange their
records over torch.distributed (gloo on CPU, nccl with CUDA) and every rank merges them, so every
rank holds the figures of one process over all images. A rank that fails sends its error instead:
then every rank fails with that one line."""
from __future__ import annotations

import datetime as _dt
import logging
import os
from typing import Any, Callable, Dict, List

from lowformer.core.errors import LowformerError, first_line
from lowformer.evaluate.records import RunRecords, merge_records

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 7200.0  # the longest a rank waits for the slowest one (LOWFORMER_DIST_TIMEOUT_S)


def gather_records(score: Callable[[], RunRecords], device: str = "cpu") -> RunRecords:
    """Run `score` (this rank's shard) and return every rank's records merged, on every rank."""
    import torch
    import torch.distributed as dist

    gpu, local_rank = device in ("cuda", "tensorrt"), int(os.environ.get("LOCAL_RANK", 0))
    pinned = gpu and "CUDA_VISIBLE_DEVICES" not in os.environ
    if pinned:  # one GPU per local rank, device 0 for torch and ONNX Runtime alike (set before CUDA starts)
        os.environ["CUDA_VISIBLE_DEVICES"] = str(local_rank)
    backend = "nccl" if gpu and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(0 if pinned else local_rank % torch.cuda.device_count())
    timeout = float(os.environ.get("LOWFORMER_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    try:
        dist.init_process_group(backend, timeout=_dt.timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as e:
        raise LowformerError(f"cannot join the torchrun group ({backend}): {first_line(e)}") from None
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        payload = _scored(score, rank)
        gathered: List[Any] = [None] * world
        try:
            dist.all_gather_object(gathered, payload)
        except RuntimeError as e:  # a rank died before it sent its records
            raise LowformerError(f"rank {rank} of {world} lost the others while gathering the records "
                                 f"({first_line(e)}): a rank failed or was killed; no report") from None
    finally:
        dist.destroy_process_group()
    failed = [(r, p["error"]) for r, p in enumerate(gathered) if "error" in p]
    if failed:
        r, msg = failed[0]
        more = f" (and {len(failed) - 1} other rank(s))" if len(failed) > 1 else ""
        raise LowformerError(f"rank {r} of {world} failed{more}: {msg}; no report")
    return merge_records([(f"rank {r}", RunRecords.from_dict(p["records"], f"rank {r}"))
                          for r, p in enumerate(gathered)])


def _scored(score: Callable[[], RunRecords], rank: int) -> Dict[str, Any]:
    """{"records": ...} or {"error": one line}: what this rank sends the others."""
    try:
        return {"records": score().to_dict()}
    except LowformerError as e:
        return {"error": str(e)}
    except Exception as e:  # any fault of this rank fails the run, named, on every rank
        log.debug("rank %d failed", rank, exc_info=True)
        return {"error": f"{type(e).__name__}: {first_line(e)}"}
