"""Which images calibrate (and which evaluate) an INT8 model, and reading them as the model sees them.

Selection is deterministic and class-stratified (lowformer.data.imagenet.stratified_subset). When the
evaluation images come from the calibration folder, the evaluation split is drawn first and the
calibration images are drawn from the rest, so the two never overlap.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np

from lowformer.data.imagenet import Sample, any_images, stratified_subset
from lowformer.core.batching import fixed_batches
from lowformer.core.errors import LowformerError

MIN_RECOMMENDED = 32  # fewer calibration images give noisy activation ranges
CALIB_SEED, EVAL_SEED = 0, 1

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """A selected list of images from one folder, with the facts a manifest records about it."""

    folder: Path
    samples: List[Sample]
    labelled: bool  # labels are real class indices (else -1)
    imagenet: bool = False

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def relative_files(self) -> List[str]:
        return sorted(os.path.relpath(s.path, self.folder) for s in self.samples)

    @property
    def sha256(self) -> str:
        """Hash of the sorted relative file list: the same images give the same hash on any machine."""
        return hashlib.sha256("\n".join(self.relative_files).encode()).hexdigest()

    def facts(self) -> Dict[str, object]:
        # `files` lets `validate` hold these images out when it evaluates on the same folder.
        return {"folder": str(self.folder.resolve()), "count": len(self), "files_sha256": self.sha256,
                "files": self.relative_files}


def _same_folder(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def select_eval(eval_data: str, eval_size: Optional[int]) -> ImageSet:
    pool = any_images(eval_data, "eval_data")
    chosen = stratified_subset(pool.samples, eval_size, seed=EVAL_SEED)
    return ImageSet(pool.root, chosen, labelled=pool.layout != "flat", imagenet=pool.imagenet)


def select_calibration(calib_data: str, calib_size: int, held_out: Optional[ImageSet] = None) -> ImageSet:
    """`calib_size` images of `calib_data`, never any image of `held_out`."""
    pool = any_images(calib_data, "calib_data")
    exclude = held_out.samples if held_out is not None else ()
    chosen = stratified_subset(pool.samples, calib_size, seed=CALIB_SEED, exclude=exclude)
    if not chosen:
        raise LowformerError(f"calibration data {calib_data}: no images left for calibration after holding out "
                             f"{len(held_out or [])} evaluation images")
    if len(chosen) < MIN_RECOMMENDED:
        log.warning("only %d calibration images (at least %d recommended): INT8 ranges may be noisy",
                    len(chosen), MIN_RECOMMENDED)
    return ImageSet(pool.root, chosen, labelled=pool.layout != "flat", imagenet=pool.imagenet)


def split_eval_and_calibration(calib_data: str, calib_size: int, eval_data: Optional[str],
                               eval_size: Optional[int]):
    """(calibration set, evaluation set): disjoint when both come from one folder."""
    eval_set = select_eval(eval_data or calib_data, eval_size)
    same = _same_folder(eval_data or calib_data, calib_data)
    calib = select_calibration(calib_data, calib_size, eval_set if same else None)
    return calib, eval_set


@dataclass
class BatchReader:
    """ONNX Runtime `CalibrationDataReader` over preprocessed images, one batch per `get_next`.

    `fixed_batch` (a model exported with a fixed batch size) pads the last batch by wrapping around.
    """

    images: np.ndarray
    input_name: str = "input"
    batch_size: int = 8
    fixed_batch: Optional[int] = None
    _pos: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.fixed_batch:
            self.batch_size = self.fixed_batch

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self._pos >= len(self.images):
            return None
        batch = self.images[self._pos:self._pos + self.batch_size]
        self._pos += self.batch_size
        if self.fixed_batch:
            batch, _ = next(fixed_batches(batch, self.fixed_batch))
        return {self.input_name: np.ascontiguousarray(batch)}

    def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
        while (item := self.get_next()) is not None:
            yield item

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def one_batch_readers(self) -> Iterator["BatchReader"]:
        """Single-batch readers: ORT's histogram calibrator holds every output of a reader in memory."""
        for start in range(0, len(self.images), self.batch_size):
            yield BatchReader(self.images[start:start + self.batch_size], self.input_name, self.batch_size,
                              self.fixed_batch)
