"""The artifacts of one evaluation: (path, manifest entry, manifest) items, their folders and names."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from lowformer.artifacts import ArtifactEntry, Manifest

Item = Tuple[Path, Optional[ArtifactEntry], Optional[Manifest]]


def folder_of(path: Path, entry: ArtifactEntry) -> Path:
    """The export folder of an artifact: its path minus the entry's relative path."""
    p = path.resolve()
    for _ in Path(entry.path).parts:
        p = p.parent
    return p


def unique_names(paths: Sequence[Path]) -> List[str]:
    """Display names of artifact files: the file name, with its folder when two names collide."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" for p in paths]
