"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class LowformerError(Exception):
    """A problem with the user's input or environment (bad model name, checkpoint, path...)."""

    exit_code = 1


class NeedsTargetDevice(LowformerError):
    """The requested step must run on a machine with TensorRT and a GPU (exit code 3)."""

    exit_code = 3


class Stopped(SystemExit):
    """The process was told to stop (SIGTERM): it unwinds like SystemExit(128 + signal), so staging
    folders and temporaries are removed on the way out; `message` is the one line the CLI says. A rank
    of torchrun says which: torchrun stops every rank once one has failed or been killed."""

    def __init__(self, code: int) -> None:
        import os
        import signal

        super().__init__(code)
        self.message = f"stopped by {signal.Signals(code - 128).name}"
        rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        if rank is not None and world is not None:
            self.message = f"rank {rank} of {world} was stopped (exit {code}): another rank failed or was killed"


def env_int(name: str, default: int, unit: str = "") -> int:
    """A whole-number setting from the environment variable `name` (else `default`); one clear line
    when it is not a whole number."""
    import os

    text = os.environ.get(name, "").strip()
    try:
        return int(text) if text else default
    except ValueError:
        raise LowformerError(f"{name} must be a whole number{' of ' + unit if unit else ''}, not {text!r}") from None


def first_line(error: "BaseException | str", limit: "int | None" = None, skip: "tuple[str, ...]" = (),
               typed: bool = False) -> str:
    """The first useful line of an exception's message (or of a text), for a one-line error.

    Lines are stripped and empty ones passed over; lines starting with one of `skip` too (e.g. OpenVINO's
    "Exception from ..." / "Check '...' failed" frames), unless every line does. An exception with an
    empty message gives its type's name, an empty text "unknown error". `typed`: "TypeName: line" (the
    type alone when the message is empty). `limit`: at most that many characters of the line.
    """
    text = error if isinstance(error, str) else str(error)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(tuple(skip))] if skip else lines
    line = (useful or lines or [""])[0]
    line = line if limit is None else line[:limit]
    name = "" if isinstance(error, str) else type(error).__name__
    if not line:
        return name or "unknown error"
    return f"{name}: {line}" if typed and name else line
