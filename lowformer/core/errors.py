"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class LowformerError(Exception):
    """A problem with the user's input or environment (bad model name, checkpoint, path...)."""

    exit_code = 1


class NeedsTargetDevice(LowformerError):
    """The requested step must run on a machine with TensorRT and a GPU (exit code 3)."""

    exit_code = 3


def env_int(name: str, default: int, unit: str = "") -> int:
    """A whole-number setting from the environment variable `name` (else `default`); one clear line
    when it is not a whole number."""
    import os

    text = os.environ.get(name, "").strip()
    try:
        return int(text) if text else default
    except ValueError:
        raise LowformerError(f"{name} must be a whole number{' of ' + unit if unit else ''}, not {text!r}") from None
