"""`lowformer demo`: the whole chain on built-in defaults."""
from __future__ import annotations

import sys
from typing import Optional

import click

from lowformer.commands.errors import handle_errors
from lowformer.commands.options import json_option
from lowformer.commands.progress import RichProgress
from lowformer.commands.render import emit_json, print_demo


@click.command("demo")
@click.option("--checkpoint", type=click.Path(), help="LowFormer-B0 checkpoint (else random weights, said plainly).")
@click.option("--data", type=click.Path(), help="Real images (ImageFolder) for parity and calibration.")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1), help="Validation images at most.")
@json_option("Print the summary as JSON to stdout.")
@handle_errors
def demo_cmd(checkpoint: Optional[str], data: Optional[str], out: str, limit: int, as_json: bool) -> None:
    """The whole chain on built-in defaults: export, INT8, parity, profiles, benchmark, report."""
    from lowformer.demo import run_demo

    summary = run_demo(out, checkpoint, data, limit=limit, progress=RichProgress())
    if as_json:
        emit_json(summary)
        sys.exit(0 if summary["passed"] else 1)
    print_demo(summary)
    if not summary["passed"]:
        sys.exit(1)
