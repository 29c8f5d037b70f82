"""The `lowformer` command: the group and its commands, one module each in `lowformer.commands`.

Every command is a thin Click layer over one library call; its options, rendering and error lines
live in `lowformer.commands` (options, render, errors, progress).
"""
from __future__ import annotations

import click

from lowformer.commands import errors
from lowformer.commands.bench import bench_cmd
from lowformer.commands.build_engine import build_engine_cmd
from lowformer.commands.calibrate import calibrate_group
from lowformer.commands.demo import demo_cmd
from lowformer.commands.export import export_cmd
from lowformer.commands.info import info_cmd, models_cmd
from lowformer.commands.profile import profile_cmd
from lowformer.commands.progress import install_logging
from lowformer.commands.report import report_cmd
from lowformer.commands.sweep import sweep_cmd
from lowformer.commands.train import train_cmd
from lowformer.commands.validate import validate_cmd


@click.group(cls=errors.OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lowformer")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error instead of one line.")
def main(debug: bool) -> None:
    """Export, quantize, validate, profile and benchmark LowFormer (and other timm) backbones.

    \b
    Typical flow:
      lowformer export b1 --to onnx --to torchscript --fp16
      lowformer validate artifacts/b1-224 --data imagenet/val
      lowformer profile artifacts/b1-224
      lowformer bench b1 --latency --optit

    \b
    Every failure is one `error:` line on stderr: exit code 1 (or the command's own, e.g. 3
    for "run this on the target device"), 2 for a usage error (a missing argument, an unknown
    or bad option), 130 when interrupted, 143 when stopped (SIGTERM).
    """
    import signal

    errors.DEBUG["on"] = debug
    install_logging()
    signal.signal(signal.SIGTERM, errors.terminate)


main.add_command(models_cmd)
main.add_command(info_cmd)
main.add_command(export_cmd)
main.add_command(build_engine_cmd)
main.add_command(validate_cmd)
main.add_command(train_cmd)
main.add_command(profile_cmd)
main.add_command(bench_cmd)
main.add_command(sweep_cmd)
main.add_command(report_cmd)
main.add_command(demo_cmd)
main.add_command(calibrate_group)
