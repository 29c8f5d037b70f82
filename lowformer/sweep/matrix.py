"""The matrix of a sweep: every (model, format, batch size) cell, the key it has in the results JSON,
and the cells that are not timed by design (an ExecuTorch program's static batch of 1)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

from lowformer.sweep.formats import STATIC_BATCH_1, STATIC_BATCH_STATUS


@dataclass(frozen=True)
class Cell:
    """One timed figure of the table: `model` (a name as `lowformer.models.registry.resolve` takes it),
    `format` (one of lowformer.sweep.formats.FORMATS), `batch_size` (images per call)."""

    model: str
    format: str
    batch_size: int

    @property
    def key(self) -> str:
        """`model|format|batch`: the cell's key in `results-<isa>.json`."""
        return f"{self.model}|{self.format}|{self.batch_size}"

    @property
    def timed(self) -> bool:
        """False for a cell that is n/a by design (an ExecuTorch program at a batch other than 1)."""
        return not (self.format in STATIC_BATCH_1 and self.batch_size != 1)

    def head(self) -> Dict[str, object]:
        """The fields every result of this cell starts with."""
        return {"model": self.model, "format": self.format, "batch_size": self.batch_size}

    def not_timed(self) -> Dict[str, object]:
        """The result of a cell that is n/a by design."""
        return {**self.head(), "status": STATIC_BATCH_STATUS}


def matrix(models: Sequence[str], formats: Sequence[str], batch_sizes: Sequence[int]) -> List[Cell]:
    """models x formats x batch sizes, model by model (each model's cells together), duplicates dropped."""
    cells: List[Cell] = []
    for m in dict.fromkeys(models):
        for f in dict.fromkeys(formats):
            cells += [Cell(m, f, bs) for bs in dict.fromkeys(batch_sizes)]
    return cells
