"""Progress for the CLI: one rich Progress for every long job, and log records through rich.

The library reports through `lowformer.core.progress` and `logging`; this package (the commands)
is the only place that knows about rich.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Iterator, Optional

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

# Human output goes to stderr so that `--json` leaves stdout to the JSON document alone; a file
# or pipe gets a fixed width so tables fold cleanly instead of at the terminal's whim.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
LINE_EVERY_S = 60.0  # without a terminal there is no live bar: one progress line this often


class _PlainFormatter(logging.Formatter):
    """Progress notes as they are; warnings and errors say so first (as the CLI's own lines do)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


def install_logging(level: int = logging.INFO) -> None:
    """Library loggers (`lowformer.*`) print through rich on stderr, above any live progress bar."""
    handler = RichHandler(console=console, show_time=False, show_level=False, show_path=False, markup=False,
                          highlighter=None, rich_tracebacks=False, keywords=[])
    handler.setFormatter(_PlainFormatter())
    root = logging.getLogger("lowformer")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class _RichTask:
    def __init__(self, owner: "RichProgress", task_id, description: str):
        self.owner, self.id, self.description = owner, task_id, description
        self._last_line = time.monotonic()

    def advance(self, n: int = 1, status: Optional[str] = None, description: Optional[str] = None) -> None:
        bar = self.owner.bar
        kw = {"description": description} if description else {}
        bar.update(self.id, advance=n, status=status or "", **kw)
        if not console.is_terminal and time.monotonic() - self._last_line >= LINE_EVERY_S:
            self._last_line = time.monotonic()
            t = next(t for t in bar.tasks if t.id == self.id)
            eta = f"{t.time_remaining / 60:.1f} min" if t.time_remaining is not None else "?"
            console.print(f"{t.description}  {int(t.completed)}/{int(t.total or 0)}  {status or ''}  ETA {eta}",
                          highlight=False)


class RichProgress:
    """The Progress protocol on one rich Progress (shown while at least one task is open)."""

    def __init__(self) -> None:
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            TextColumn("{task.fields[status]}"), console=console, transient=True,
                            disable=not console.is_terminal)
        self._open = 0

    @contextlib.contextmanager
    def task(self, description: str, total: Optional[int] = None, completed: int = 0) -> Iterator[_RichTask]:
        if self._open == 0:
            self.bar.start()
        self._open += 1
        task_id = self.bar.add_task(description, total=total, completed=completed, status="")
        try:
            yield _RichTask(self, task_id, description)
        finally:
            self.bar.remove_task(task_id)
            self._open -= 1
            if self._open == 0:
                self.bar.stop()
