"""Whether ExecuTorch is here, and its native runtime kept quiet.

ExecuTorch is an optional package (the `executorch` extra): every entry point asks `require()` first,
so a machine without it gets one line. Its C++ runtime logs to the process's stderr (XNNPACK's cpuinfo
probes print half a dozen lines on every program load on x86): `native_stderr()` holds those back and
gives the last of them to the error message when a load fails.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import tempfile
from typing import Iterator, List

from lowformer.core.errors import LowformerError

EXTRA = "pip install 'lowformer[executorch]' (make install installs it)"
# runtime log lines that are noise on any x86 machine (cpuinfo probing ARM-only files)
_NOISE = re.compile(r"cpuinfo_utils\.cpp|Failed to open midr file|CPU info and manual query")


def available() -> bool:
    return importlib.util.find_spec("executorch") is not None


def require() -> None:
    """One LowformerError when ExecuTorch cannot be imported here."""
    if not available():
        raise LowformerError(f"ExecuTorch is not installed: {EXTRA}")
    try:
        # torchao (imported by ExecuTorch) registers an Enum with torch's pytree, which logs a
        # deprecation warning on every start: not ours to act on
        from lowformer.engines.pt2.runner import quiet_torch_logs

        with quiet_torch_logs("torch.utils._pytree"):
            import executorch.exir  # noqa: F401
            import executorch.runtime  # noqa: F401
    except Exception as e:  # a wheel built against another torch fails here
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LowformerError(f"ExecuTorch does not load with this torch: {first[:200]} ({EXTRA})") from None


def version() -> str:
    try:
        from importlib.metadata import version as _v

        return _v("executorch")
    except Exception:
        return "unknown"


class NativeLog:
    """What the native runtime printed inside a `native_stderr()` block (noise removed)."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    @property
    def last(self) -> str:
        return self.lines[-1] if self.lines else ""


@contextlib.contextmanager
def native_stderr() -> Iterator[NativeLog]:
    """File descriptor 2 redirected to a temporary file for the block; what is not noise is written
    back to stderr afterwards on success, and kept in the yielded log for an error message."""
    log = NativeLog()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, OSError):  # no real stderr (pytest capture): nothing to redirect
        yield log
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    failed = False
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield log
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            log.lines[:] = [ln.strip() for ln in text.splitlines() if ln.strip() and not _NOISE.search(ln)]
            if not failed and log.lines:
                sys.stderr.write("\n".join(log.lines) + "\n")
