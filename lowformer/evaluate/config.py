"""Typed configs of an evaluation (lowformer.core.config): which images and how they are decoded
(`DataConfig`), and which PyTorch model the artifacts are compared with (`ReferenceConfig`).
`validate` and `explain` compose them (lowformer.validate.ValidateConfig, lowformer.explain.ExplainConfig)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from lowformer.core.config import Config
from lowformer.core.errors import LowformerError


def _triplet(value: Any) -> Optional[Tuple[float, ...]]:
    return None if value is None else tuple(value)


@dataclass(frozen=True)
class DataConfig(Config):
    """The images of an evaluation and their preprocessing.

    `labels`: a labels file (LOC_val_solution.csv, or lines of '<file> <wnid-or-index>') for a flat
    folder (None: the class folders are the labels); `limit`: a deterministic, class-stratified
    subset of that many images (None: all); `seed`: the subset's seed; `batch_size`: images per
    decoded batch (None: the command's default, validate 50, explain 25); `workers`: DataLoader
    decode processes (None: cores-1, at most 4); `skip_bad_images`: skip (and list) unreadable images
    instead of failing. Overrides of the manifest's preprocessing (None: the manifest's):
    `crop_ratio` (crop/resize, e.g. 0.875), `interpolation` (bicubic | bilinear | nearest), `mean`
    and `std` (three floats each, the normalization)."""

    labels: Optional[str] = None
    limit: Optional[int] = None
    batch_size: Optional[int] = None
    workers: Optional[int] = None
    seed: int = 0
    skip_bad_images: bool = False
    crop_ratio: Optional[float] = None
    interpolation: Optional[str] = None
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _triplet(self.mean))
        object.__setattr__(self, "std", _triplet(self.std))

    def checked(self) -> "DataConfig":
        """Itself, or one LowformerError for a batch size or limit under 1."""
        if self.batch_size is not None and self.batch_size < 1:
            raise LowformerError("batch size must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise LowformerError("limit must be at least 1")
        return self

    def overrides(self) -> Dict[str, Any]:
        """The preprocessing overrides, as `Preprocessing.override` takes them."""
        return dict(crop_ratio=self.crop_ratio, interpolation=self.interpolation, mean=self.mean, std=self.std)


VERIFY_MODES = ("cache", "full")


@dataclass(frozen=True)
class ReferenceConfig(Config):
    """The PyTorch reference of an evaluation.

    `reference`: a model name (b1, timm:<name>; None: the model the artifacts' manifests came
    from); `checkpoint`: its weights (with `reference`: None is random init; alone: the manifest's
    model with these weights, which must have the sha256 the manifest records); `verify`: cache
    (trust .verified.json for files whose size, mtime, ctime and inode are unchanged) or full
    (re-hash every artifact and the reference checkpoint)."""

    reference: Optional[str] = None
    checkpoint: Optional[str] = None
    verify: str = "cache"

    @property
    def full(self) -> bool:
        """Whether every file is re-hashed (`verify="full"`)."""
        return self.verify == "full"

    def checked(self) -> "ReferenceConfig":
        """Itself, or one LowformerError for an unknown `verify`."""
        if self.verify not in VERIFY_MODES:
            raise LowformerError(f"verify is cache or full, not {self.verify!r}")
        return self
