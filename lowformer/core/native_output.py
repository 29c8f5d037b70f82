"""Native libraries that print to the process's stderr (file descriptor 2), past Python's logging."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator, Sequence

# torch's Kineto profiler prints a USDT trace point on every start and stop: noise, not news.
PROFILER_NOISE = ("USDT:",)


@contextlib.contextmanager
def drop_native_lines(prefixes: Sequence[str] = PROFILER_NOISE) -> Iterator[None]:
    """Capture what native code writes to fd 2 inside the block; pass on every line that does not
    start with one of `prefixes` (nothing else is hidden, and it all comes out even on error)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. captured by a test runner): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith(tuple(prefixes))]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
