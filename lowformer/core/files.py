"""Atomic file writes: a temporary name in the same folder, renamed into place on success."""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional, Union

from lowformer.core.errors import LowformerError

PathLike = Union[str, os.PathLike]


def ensure_dir(path: PathLike) -> Path:
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LowformerError(f"cannot create folder {p}: {e.strerror or e}") from None
    if not os.access(p, os.W_OK):
        raise LowformerError(f"folder is not writable: {p}")
    return p


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    final = Path(path)
    ensure_dir(final.parent)
    # the pid in the name lets a later run tell a dead writer's leftover from a live writer's file
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give them the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _nonfinite_key(data: Any, where: str = "") -> Optional[str]:
    """Where (`a.b[0].c`) the first NaN/Inf float of a JSON-ready value is, else None."""
    if isinstance(data, float) and not math.isfinite(data):
        return where or "the value"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for k, v in items:
        found = _nonfinite_key(v, f"{where}[{k}]" if isinstance(k, int) else f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def write_json(path: PathLike, data: Any) -> None:
    """Strict JSON (no bare NaN/Infinity tokens, which strict parsers reject): a non-finite number is
    refused in one line naming its key; records store null and a reason instead."""
    try:
        text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
        key = _nonfinite_key(data)
        if key is None:
            raise
        raise LowformerError(f"refused to write {path}: {key} is not a finite number "
                             "(strict JSON has no NaN or Infinity)") from None
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def _no_constant(token: str) -> Any:
    raise ValueError(f"a bare {token} token (not valid JSON)")


def loads_strict(text: str) -> Any:
    """json.loads that rejects the NaN / Infinity / -Infinity tokens Python's json would accept."""
    return json.loads(text, parse_constant=_no_constant)


_LEFTOVER = re.compile(r"^\.(?:staging-(\d+)-.*|.+\.(\d+)\.[^.]+\.tmp)$")
LEGACY_TMP_AGE_S = 3600.0  # temporaries of older versions carry no pid: removed once this old


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_leftovers(folder: PathLike, keep: Optional[Path] = None) -> List[str]:
    """Remove staging folders and `.tmp` files that dead processes left in `folder` (call it while
    holding the folder's lock); returns their names."""
    removed = []
    folder = Path(folder)
    for p in folder.iterdir() if folder.is_dir() else ():
        if keep is not None and p == keep:
            continue
        m = _LEFTOVER.match(p.name)
        pid = int(m.group(1) or m.group(2)) if m else None
        stale = pid is not None and pid != os.getpid() and not _alive(pid)
        if not m and p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
            stale = time.time() - p.stat().st_mtime > LEGACY_TMP_AGE_S
        if stale:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed
