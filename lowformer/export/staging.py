"""Exports as transactions: every file is written into a staging folder inside the export folder and
moved into place at the end, under the folder lock, together with the manifest update.

A failure or a kill before the commit leaves the export folder exactly as it was (the next writer
removes the dead process's staging folder); the commit itself is a few renames followed by the
manifest write, and the manifest records each file's size and sha256, so a kill inside that window
is detected when the folder is read (artifacts.Manifest.verify).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, List, Optional

from lowformer import artifacts
from lowformer.artifacts import Manifest
from lowformer.core.files import remove_stale_leftovers

log = logging.getLogger(__name__)

STAGING_PREFIX = ".staging-"


class Staging:
    """A private folder for one export run inside `out` (same file system: renames are atomic)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=self.out))

    def path(self, name: str) -> Path:
        """Where to write `name`; every file directly in the staging folder is committed (folders
        inside it, such as temporaries, are not)."""
        return self.dir / name

    def files(self) -> List[str]:
        return sorted(p.name for p in self.dir.iterdir() if p.is_file())

    def commit(self, apply: Callable[[Optional[Manifest]], Manifest], lock_timeout: float) -> Manifest:
        """Under the folder lock: move the staged files into place, then write `apply(current)`."""
        lock = artifacts.folder_lock(self.out, lock_timeout)
        with artifacts.locked(lock, self.out):
            remove_stale_leftovers(self.out, keep=self.dir)
            current = Manifest.load(self.out) if (self.out / artifacts.MANIFEST_NAME).is_file() else None
            manifest = apply(current)  # may refuse (raise) before anything moved
            for name in self.files():
                os.replace(self.dir / name, self.out / name)
            manifest.save(self.out)
        self.discard()
        return manifest

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
