"""`lowformer train`: the paper's recipe, resumable, DDP under torchrun."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import click

from lowformer.commands.errors import handle_errors
from lowformer.commands.options import json_option, options_into, parse_json_object, parse_overrides, parse_sizes
from lowformer.commands.progress import RichProgress
from lowformer.commands.render import emit_json, print_trained


@dataclass(frozen=True)
class TrainDataOptions:
    """The images of `train`: the training and validation folders, the training resolutions (each
    batch draws one), the evaluation resolution, the loading processes and the class count."""

    data: str
    val_data: Optional[str]
    image_sizes: str
    eval_size: int
    workers: int
    num_classes: Optional[int]

    def fields(self) -> Dict[str, Any]:
        """Keywords of lowformer.training.TrainConfig (--image-sizes parsed)."""
        return {**asdict(self), "image_sizes": parse_sizes(self.image_sizes)}


@dataclass(frozen=True)
class ScheduleOptions:
    """The optimisation of `train`: epochs, batch per process, peak lr, gradient accumulation, a cap on
    optimizer steps, epochs between evaluations, and the seed."""

    epochs: int
    batch_size: int
    lr: Optional[float]
    accum_steps: int
    max_steps: Optional[int]
    eval_every: int
    seed: int

    def fields(self) -> Dict[str, Any]:
        """Keywords of lowformer.training.TrainConfig."""
        return asdict(self)


@dataclass(frozen=True)
class TrainRunOptions:
    """Where `train` runs and writes: the run folder (`out`, `resume` it), the device, mixed precision
    (`amp`), CPU threads, and the timm model's arguments (`model_kwargs`, JSON)."""

    out: Optional[str]
    resume: bool
    device: Optional[str]
    amp: bool
    threads: Optional[int]
    model_kwargs: Optional[str]

    def fields(self) -> Dict[str, Any]:
        """Keywords of lowformer.training.TrainConfig (--model-kwargs parsed; `resume` is train's)."""
        return dict(out=self.out, device=self.device, amp=self.amp, threads=self.threads,
                    model_kwargs=parse_json_object(self.model_kwargs, "--model-kwargs"))


@dataclass(frozen=True)
class RecipeOptions:
    """Overrides of the training recipe: the named options (None: the recipe's) and `--set KEY=VALUE`."""

    mixup: Optional[float]
    cutmix: Optional[float]
    smoothing: Optional[float]
    randaug: Optional[str]
    reprob: Optional[float]
    drop_path: Optional[float]
    weight_decay: Optional[float]
    warmup_epochs: Optional[float]
    ema_decay: Optional[float]
    clip_grad: Optional[float]
    overrides: Tuple[str, ...]

    def items(self) -> Dict[str, Any]:
        """The `recipe` of lowformer.training.TrainConfig (`recipe_items`)."""
        return recipe_items(self.overrides, self.randaug, mixup_alpha=self.mixup, cutmix_alpha=self.cutmix,
                            smoothing=self.smoothing, reprob=self.reprob, drop_path=self.drop_path,
                            weight_decay=self.weight_decay, warmup_epochs=self.warmup_epochs,
                            ema_decay=self.ema_decay, clip_grad=self.clip_grad)


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
@options_into("data_options", TrainDataOptions)
@options_into("schedule", ScheduleOptions)
@options_into("run", TrainRunOptions)
@options_into("recipe", RecipeOptions)
def train_cmd(model: str, data_options: "TrainDataOptions", schedule: "ScheduleOptions", run: "TrainRunOptions",
              recipe: "RecipeOptions", as_json: bool) -> None:
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

    cfg = TrainConfig(model=model, **data_options.fields(), **schedule.fields(), **run.fields(),
                      recipe=recipe.items())
    summary = train(cfg, resume=run.resume, progress=RichProgress())
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
