"""`lowformer models` and `lowformer info`: what the catalog knows of the models."""
from __future__ import annotations

from typing import Optional

import click

from lowformer.commands.errors import handle_errors
from lowformer.commands.options import json_option
from lowformer.commands.render import emit_json, print_info, print_models


@click.command("models")
@json_option()
@click.option("--peers", is_flag=True, help="List the paper's peer backbones and their timm names.")
@click.option("--count", is_flag=True, help="Count params and MACs on the built models (slower) instead of "
                                            "showing the published figures.")
@handle_errors
def models_cmd(as_json: bool, peers: bool, count: bool) -> None:
    """The LowFormer variants with params, MACs at 224, and published numbers."""
    from lowformer.models.catalog import model_table, peer_table

    rows = peer_table() if peers else model_table(computed=count)
    if as_json:
        return emit_json(rows)
    print_models(rows, peers, count)


@click.command("info")
@click.argument("model")
@click.option("--checkpoint", type=click.Path(), help="Official LowFormer or timm-format state dict.")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(32, 2048))
@json_option()
@handle_errors
def info_cmd(model: str, checkpoint: Optional[str], image_size: int, as_json: bool) -> None:
    """Params, MACs and per-stage output shapes of MODEL (b0 b1 b15 b2 b3 e1 e2 e3, timm:<name>)."""
    from lowformer.models.catalog import model_info

    data = model_info(model, checkpoint, image_size)
    if as_json:
        return emit_json(data)
    print_info(data, image_size)
