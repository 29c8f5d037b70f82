"""`lowformer train`: the paper's recipe, resumable, DDP under torchrun."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import click

from lowformer.commands.errors import handle_errors
from lowformer.commands.options import json_option, parse_json_object, parse_overrides, parse_sizes
from lowformer.commands.progress import RichProgress
from lowformer.commands.render import emit_json, print_trained


@click.command("train")
@click.argument("model")
@click.option("--data", required=True, type=click.Path(), help="Training images: ImageFolder (one sub-folder per class).")
@click.option("--val-data", type=click.Path(), help="Validation ImageFolder (same classes): top-1 per epoch, picks best.pt.")
@click.option("--epochs", default=300, show_default=True, type=click.IntRange(1), help="All epochs, warm-up included.")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(1), help="Images per step per process.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate [default: the recipe's lr per 128 images x total batch / 128].")
@click.option("--image-sizes", default="128,160,192,224", show_default=True,
              help="Training resolutions; each batch draws one.")
@click.option("--eval-size", default=224, show_default=True, type=click.IntRange(16), help="Evaluation resolution.")
@click.option("--out", type=click.Path(file_okay=False), help="Run folder [default: runs/<model>].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.pt (repeat the original options).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="[default: cuda when available]")
@click.option("--amp", is_flag=True, help="Mixed precision (float16 + grad scaling on CUDA, bfloat16 on CPU).")
@click.option("--workers", default=4, show_default=True, type=click.IntRange(0), help="Data-loading processes.")
@click.option("--accum-steps", default=1, show_default=True, type=click.IntRange(1), help="Gradient accumulation.")
@click.option("--num-classes", type=click.IntRange(1), help="[default: number of class folders in --data]")
@click.option("--max-steps", type=click.IntRange(1), help="Stop after this many optimizer steps (schedule shortened).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--model-kwargs", metavar="JSON",
              help="timm model arguments, e.g. '{\"width_list\": [8,16,32,48,64], \"depth_list\": [0,1,1,1,1], "
                   "\"head_widths\": [64,64]}'.")
@click.option("--mixup", type=click.FloatRange(0), help="Mixup alpha (recipe item mixup_alpha; 0 disables).")
@click.option("--cutmix", type=click.FloatRange(0), help="CutMix alpha (recipe item cutmix_alpha; 0 disables).")
@click.option("--smoothing", type=click.FloatRange(0, 1), help="Label smoothing.")
@click.option("--randaug", help="timm RandAugment string (e.g. rand-n2-m5-mstd1.0-inc1) or 'none'.")
@click.option("--reprob", type=click.FloatRange(0, 1), help="Random-erasing probability.")
@click.option("--drop-path", type=click.FloatRange(0, 1), help="Stochastic depth rate (linear over depth).")
@click.option("--weight-decay", type=click.FloatRange(0), help="AdamW weight decay (never on norms and biases).")
@click.option("--warmup-epochs", type=click.FloatRange(0), help="[default: 20 of 300, shortened for short runs]")
@click.option("--ema-decay", type=click.FloatRange(0, 1), help="EMA decay (0: no EMA, evaluate the raw weights).")
@click.option("--clip-grad", type=click.FloatRange(0), help="Gradient-norm clipping (0 disables).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any recipe item, e.g. --set crop_scale=[0.35,1] --set bce=false --set mesa=none "
                   "(lr_per_128 weight_decay betas eps warmup_epochs min_lr clip_grad smoothing bce mixup_alpha "
                   "cutmix_alpha mix_prob randaug reprob crop_scale hflip drop_path ema_decay ema_warmup_steps mesa).")
@click.option("--eval-every", default=1, show_default=True, type=click.IntRange(1), help="Epochs between evaluations.")
@click.option("--threads", type=click.IntRange(1), help="torch CPU threads per process.")
@json_option("Print the run summary as JSON to stdout.")
@handle_errors
def train_cmd(model, data, val_data, epochs, batch_size, lr, image_sizes, eval_size, out, resume, device, amp,
              workers, accum_steps, num_classes, max_steps, seed, model_kwargs, mixup, cutmix, smoothing, randaug,
              reprob, drop_path, weight_decay, warmup_epochs, ema_decay, clip_grad, overrides, eval_every, threads,
              as_json):
    """Train MODEL (b0 ... e3, timm:<name>) with the paper's recipe; resumable, and DDP under torchrun.

    \b
    Writes to the run folder: last.pt (every epoch, atomic; --resume continues it exactly),
    best.pt (EMA weights, official LowFormer keys: `lowformer export b1 --checkpoint best.pt`),
    metrics.jsonl, config.json, summary.json.
    \b
    Several processes: torchrun --nproc_per_node N -m lowformer train MODEL --data ...
    (lr and total batch scale with N; NCCL on GPUs, gloo on CPUs).
    """
    from lowformer.training import TrainConfig, train

    recipe = recipe_items(overrides, randaug, mixup_alpha=mixup, cutmix_alpha=cutmix, smoothing=smoothing,
                          reprob=reprob, drop_path=drop_path, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                          ema_decay=ema_decay, clip_grad=clip_grad)
    cfg = TrainConfig(model=model, data=data, val_data=val_data, out=out, epochs=epochs, batch_size=batch_size, lr=lr,
                      image_sizes=parse_sizes(image_sizes), eval_size=eval_size, device=device, amp=amp,
                      workers=workers, accum_steps=accum_steps, num_classes=num_classes, max_steps=max_steps,
                      seed=seed, model_kwargs=parse_json_object(model_kwargs, "--model-kwargs"), recipe=recipe,
                      eval_every=eval_every, threads=threads)
    summary = train(cfg, resume=resume, progress=RichProgress())
    if summary["rank"] != 0:
        return
    if as_json:
        return emit_json(summary)
    print_trained(summary)


def recipe_items(overrides: Sequence[str], randaug: Optional[str], **named: Any) -> Dict[str, Any]:
    """The recipe overrides: `--set KEY=VALUE` items, then the named options that were given."""
    recipe = parse_overrides(overrides)
    recipe.update({k: v for k, v in named.items() if v is not None})
    if randaug is not None:
        recipe["randaug"] = None if randaug.lower() in ("none", "off", "") else randaug
    return recipe
