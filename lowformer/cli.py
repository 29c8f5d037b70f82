"""The `lowformer` command: a thin Click layer over the library (every command is a function call)."""
from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, Optional

import click
from rich.console import Console
from rich.table import Table

from .errors import LowformerError

# Human output goes to stderr so that `--json` leaves stdout to the JSON document alone.
console = Console(stderr=True)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def handle_errors(fn: Callable) -> Callable:
    """Turn user errors into one red line and the error's exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LowformerError as e:
            console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            console.print("[red]interrupted[/red]")
            sys.exit(130)

    return wrapper


def print_table(title: str, columns, rows) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c == columns[0] else "right")
    for r in rows:
        table.add_row(*[str(v) for v in r])
    console.print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lowformer")
def main() -> None:
    """Export, quantize, validate, profile and benchmark LowFormer (and other timm) backbones.

    \b
    Typical flow:
      lowformer export b1 --to onnx --to torchscript --fp16
      lowformer validate artifacts/b1-224 --data imagenet/val
      lowformer profile artifacts/b1-224
      lowformer bench b1 --latency --optit
    """


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
@click.option("--peers", is_flag=True, help="List the paper's peer backbones and their timm names.")
@handle_errors
def models_cmd(as_json: bool, peers: bool) -> None:
    """The LowFormer variants with params, MACs at 224, and published numbers."""
    from .info import model_table, peer_table

    rows = peer_table() if peers else model_table()
    if as_json:
        return emit_json(rows)
    if peers:
        print_table("Peer backbones of the paper", ["peer", "timm name", "in timm"],
                    [(r["peer"], r["timm_name"] or "-", "yes" if r["available"] else "no") for r in rows])
        return
    print_table("LowFormer variants", ["name", "model", "params (M)", "MACs@224 (M)", "top-1", "A40 img/s",
                                       "A40 ms", "weights"],
                [(r["name"], r["display"], f"{r['params'] / 1e6:.2f}", f"{r['macs'] / 1e6:.0f}",
                  r["published"].get("top1", "-"), r["published"].get("gpu_throughput") or "-",
                  r["published"].get("gpu_latency_ms") or "-", "yes" if r["has_weights"] else "none published")
                 for r in rows])


@main.command("info")
@click.argument("model")
@click.option("--checkpoint", type=click.Path(), help="Official LowFormer or timm-format state dict.")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(32, 2048))
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
@handle_errors
def info_cmd(model: str, checkpoint: Optional[str], image_size: int, as_json: bool) -> None:
    """Params, MACs and per-stage output shapes of MODEL (b0 b1 b15 b2 b3 e1 e2 e3, timm:<name>)."""
    from .info import model_info

    data = model_info(model, checkpoint, image_size)
    if as_json:
        return emit_json(data)
    console.print(f"[bold]{data['display']}[/bold]  params {data['params'] / 1e6:.2f} M, "
                  f"MACs {data['macs'] / 1e6:.1f} M at {image_size}x{image_size}, checkpoint: {data['checkpoint']}")
    print_table("Output shapes", ["module", "shape"], [(r["module"], "x".join(map(str, r["shape"])))
                                                       for r in data["stages"]])


# Further commands are added below this line, one block each.
