"""Training checkpoints: atomic writes, weights_only reads, exact RNG state for bit-exact resume."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from lowformer.core.errors import LowformerError
from lowformer.core.files import atomic_path

CHECKPOINT_FORMAT = "lowformer-train/1"



def rng_state() -> Dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_seeds(seed: int, epoch: int, rank: int) -> Dict[str, int]:
    """The seeds of one epoch on one rank: global RNGs (mixup, drop path, main-process augmentation)
    and the data-loader generator that seeds the worker processes."""
    a, b = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    return {"global": int(a), "loader": int(b)}


def save_checkpoint(path: os.PathLike, state: Dict[str, Any]) -> None:
    """torch.save to a temporary file, flushed to disk, then renamed over `path`."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())


def load_checkpoint_file(path: os.PathLike) -> Dict[str, Any]:
    from lowformer.models.checkpoints import check_archive

    check_archive(path)  # declared sizes first: a deflate bomb is refused before it inflates
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, foreign pickle
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LowformerError(f"cannot read checkpoint {path}: {first}") from None


def remove_stale_temporaries(run_dir: Path) -> List[str]:
    """Temporary files our atomic writes leave behind when the process is killed mid-write."""
    removed = []
    for name in ("last.pt", "best.pt", "metrics.jsonl", "config.json", "summary.json"):
        for p in run_dir.glob(f".{name}.*.tmp"):
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def export_state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Weights as written to best.pt: official LowFormer keys for LowFormer, timm keys otherwise."""
    from timm.models.lowformer import LowFormer

    from lowformer.models.checkpoints import to_official_keys

    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return to_official_keys(sd) if isinstance(model, LowFormer) else sd


