"""Every failure is one red `error:` line and an exit code: the commands' decorator, the group class
that does the same for Click's own errors, and the line itself (library parameter names as flags)."""
from __future__ import annotations

import functools
import re
import sys
from typing import Callable

import click
from rich.text import Text

from lowformer.commands.progress import console
from lowformer.core.errors import LowformerError, NeedsTargetDevice, Stopped, first_line

# Library errors name parameters; the user typed flags. Whole-word names only (they have underscores).
PARAMETER_FLAGS = {"calib_data": "--calib-data", "eval_data": "--eval-data", "skip_bad_images": "--skip-bad-images",
                   "calib_size": "--calib-size", "image_size": "--image-size", "batch_size": "--batch-size",
                   "lock_timeout": "--lock-timeout", "skip_missing": "--skip-missing", "int8_target": "--target",
                   "keep_f32": "--keep-f32"}

DEBUG = {"on": False}  # `lowformer --debug CMD`: show tracebacks instead of the one-line error


def speak_flags(message: str) -> str:
    return re.sub(r"\b(" + "|".join(PARAMETER_FLAGS) + r")\b", lambda m: PARAMETER_FLAGS[m.group(1)], message)


def error_line(message: str) -> None:
    console.print(Text.assemble(("error:", "red"), " ", speak_flags(message)), highlight=False, soft_wrap=True)


def handle_errors(fn: Callable) -> Callable:
    """Every failure is one red line and a non-zero exit code, never a traceback (unless --debug).

    LowformerError: its message and exit code. OSError (disk full, read-only, permissions): what the
    system said and the file. Anything else is a bug of ours: its type and first line.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit):
            raise
        except NeedsTargetDevice as e:  # not a failure: the rest runs on the device (exit 3)
            console.print(Text.assemble(("next step:", "bold"), " ", str(e)), highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except LowformerError as e:
            if DEBUG["on"]:
                raise
            error_line(str(e))
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            error_line("interrupted")
            sys.exit(130)
        except Stopped as e:
            error_line(e.message)
            sys.exit(e.code)
        except OSError as e:
            if DEBUG["on"]:
                raise
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            error_line(f"{e.strerror or first_line(e)}{where}")
            sys.exit(1)
        except Exception as e:  # noqa: BLE001 - the promise is one line, whatever failed
            if DEBUG["on"]:
                raise
            error_line(f"{type(e).__name__}: {first_line(e)} (rerun with --debug for the traceback)")
            sys.exit(1)

    return wrapper


def terminate(signum, frame) -> None:
    # SIGTERM unwinds like an exception, so staging folders and temporaries are removed on the way out
    raise Stopped(128 + signum)


class OneLineErrors(click.Group):
    """Click's own errors (usage, bad option values, Ctrl-C at a prompt) in the format of every other
    error: one `error:` line; usage errors keep Click's exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            message = " ".join(e.format_message().split())
            ctx = getattr(e, "ctx", None)
            if isinstance(e, click.UsageError) and ctx is not None:
                message += f" (see '{ctx.command_path} --help')"
            error_line(message)
            sys.exit(e.exit_code)
        except click.Abort:
            error_line("interrupted")
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)  # an int: the code of click's Exit (--help, --version)
