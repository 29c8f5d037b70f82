"""Single process or torchrun DDP (NCCL on GPUs, gloo on CPUs) behind one small object."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lowformer.core.errors import LowformerError



@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere (BN statistics drift apart between ranks)."""
        if self.world > 1:
            for t in module.state_dict().values():
                dist.broadcast(t, src=0)

    def sum(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        if self.world == 1:
            return t
        x = t.to(device)
        dist.all_reduce(x)
        return x.cpu()


def _setup_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_available():
        raise LowformerError("torch.distributed is not available in this PyTorch build")
    owned = False
    if device == "cuda" and torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # before NCCL picks a device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        owned = True
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owned)


