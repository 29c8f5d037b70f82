"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class LowformerError(Exception):
    """A problem with the user's input or environment (bad model name, checkpoint, path...)."""

    exit_code = 1


class NeedsTargetDevice(LowformerError):
    """The requested step must run on a machine with TensorRT and a GPU (exit code 3)."""

    exit_code = 3
