"""The one progress protocol of the library: long jobs report steps; the CLI renders them.

Library code never imports rich or click. A long job takes a `progress: Progress` argument, opens
`with progress.task(description, total) as task:` and calls `task.advance(n)` (optionally with a
short `status`, e.g. running top-1); `no_progress` is the silent default. The CLI passes its
rich-backed implementation (lowformer.commands.progress).
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, Iterator, Optional, Protocol


class Task(Protocol):
    def advance(self, n: int = 1, status: Optional[str] = None, description: Optional[str] = None) -> None: ...


class Progress(Protocol):
    def task(self, description: str, total: Optional[int] = None, completed: int = 0) -> ContextManager[Task]: ...


class _SilentTask:
    def advance(self, n: int = 1, status: Optional[str] = None, description: Optional[str] = None) -> None:
        pass


class _Silent:
    @contextlib.contextmanager
    def task(self, description: str, total: Optional[int] = None, completed: int = 0) -> Iterator[Task]:
        yield _SilentTask()


no_progress: Progress = _Silent()
