"""Training and evaluation data: ImageFolder datasets, timm's augmentation pipeline at several
resolutions, and a batch sampler that picks one resolution per batch (the paper's random-resolution
training). Every random choice is a function of (seed, epoch, rank), so an epoch can be replayed."""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from lowformer.core.errors import LowformerError
from lowformer.data.preprocess import Preprocessing



def open_image_folder(path: str, what: str = "--data", min_classes: int = 2):
    """torchvision's ImageFolder (class = sorted sub-folder index), with one-line errors; training
    needs `min_classes` class folders (a classifier of one class learns nothing)."""
    from torchvision.datasets import ImageFolder

    if not path or not os.path.isdir(path):
        raise LowformerError(f"{what}: folder not found: {path}")
    try:
        folder = ImageFolder(path, allow_empty=False)
    except (FileNotFoundError, RuntimeError) as e:
        raise LowformerError(f"{what}: {path} is not an image folder (class sub-folders of images): "
                             f"{str(e).splitlines()[0]}") from None
    if len(folder.classes) < min_classes:
        raise LowformerError(f"{what}: {path} has {len(folder.classes)} class folder(s) "
                             f"({', '.join(folder.classes)}); training needs at least {min_classes}")
    return folder


def train_transforms(sizes: Sequence[int], *, mean, std, crop_scale=(0.08, 1.0), hflip: float = 0.5,
                     randaug: Optional[str] = None, reprob: float = 0.0,
                     interpolation: str = "random") -> Dict[int, Callable]:
    """One timm training pipeline per resolution: RandomResizedCrop (random interpolation), flip,
    RandAugment (timm config string, e.g. `rand-n1-m3-mstd1.0-inc1`), normalize, random erasing."""
    from timm.data import create_transform

    return {s: create_transform(s, is_training=True, scale=tuple(crop_scale), hflip=hflip, color_jitter=None,
                                auto_augment=randaug or None, interpolation=interpolation, mean=tuple(mean),
                                std=tuple(std), re_prob=reprob, re_mode="const", re_count=1)
            for s in sizes}


class MultiSizeDataset(Dataset):
    """Items are addressed as (index, size): the sample is transformed for that resolution."""

    def __init__(self, folder, transforms: Dict[int, Callable]):
        self.folder = folder
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, key: Tuple[int, int]):
        index, size = key
        path, target = self.folder.samples[index]
        return self.transforms[size](self.folder.loader(path)), target


class RandomResolutionBatchSampler(Sampler[List[Tuple[int, int]]]):
    """Full batches of (index, size) from a DistributedSampler (which also serves one process);
    all ranks draw the same size for a given batch, from a generator seeded by (seed, epoch)."""

    def __init__(self, sampler: DistributedSampler, batch_size: int, sizes: Sequence[int], seed: int,
                 max_batches: Optional[int] = None):
        self.sampler = sampler
        self.batch_size = batch_size
        self.sizes = list(sizes)
        self.seed = seed
        self.epoch = 0
        full = len(sampler) // batch_size
        self.num_batches = full if max_batches is None else min(full, max_batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        choice = torch.randint(len(self.sizes), (self.num_batches,), generator=g).tolist()
        indices = iter(self.sampler)
        for b in range(self.num_batches):
            size = self.sizes[choice[b]]
            yield [(next(indices), size) for _ in range(self.batch_size)]


def train_loader(dataset: MultiSizeDataset, batch_sampler: RandomResolutionBatchSampler, workers: int,
                 pin_memory: bool = False) -> DataLoader:
    """A loader whose worker seeds come from a generator the caller reseeds each epoch."""
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator())


class _Strided(Dataset):
    """Every `world`-th sample starting at `rank`: a split of an evaluation set without padding,
    so that summing per-rank counts gives exact totals."""

    def __init__(self, base, rank: int, world: int):
        self.base, self.indices = base, list(range(rank, len(base), world))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.base[self.indices[i]]


def eval_loader(path: str, preprocessing: Preprocessing, batch_size: int, workers: int,
                rank: int = 0, world: int = 1) -> Tuple[DataLoader, object]:
    folder = open_image_folder(path, "--val-data", min_classes=1)
    folder.transform = preprocessing.transform()
    part = _Strided(folder, rank, world) if world > 1 else folder
    return DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=workers), folder


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device,
             autocast_dtype: Optional[torch.dtype] = None, reduce: Optional[Callable] = None,
             on_batch: Optional[Callable[[], None]] = None) -> Dict[str, float]:
    """Top-1 / top-5 accuracy (%) and cross-entropy; `reduce` sums the raw counts across processes."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # top1 hits, top5 hits, loss sum, n
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == targets[:, None]
        totals += torch.tensor([hits[:, 0].sum().item(), hits.any(dim=1).sum().item(),
                                torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item(),
                                len(targets)], dtype=torch.float64)
        if on_batch is not None:
            on_batch()
    model.train(was_training)
    if reduce is not None:
        totals = reduce(totals)
    n = max(totals[3].item(), 1.0)
    return {"top1": 100.0 * totals[0].item() / n, "top5": 100.0 * totals[1].item() / n,
            "loss": totals[2].item() / n, "n": int(totals[3].item())}
