"""The trainer: the paper's ImageNet training recipe, assembled from timm's parts: AdamW without decay on norms
and biases, linear lr scaling, cosine schedule with warm-up (per step), gradient clipping, mixup /
cutmix with label smoothing and binary cross-entropy, RandAugment and random erasing, random
resolution per batch, stochastic depth, EMA of the weights (used for evaluation and export), MESA,
gradient accumulation. Single process or under `torchrun` (DDP: NCCL on GPUs, gloo on CPUs).

Reliability: a checkpoint (`last.pt`, read with `torch.load(weights_only=True)`) is written
atomically after every epoch; every random choice of an epoch is derived from (seed, epoch, rank),
so `resume=True` replays the interrupted epoch exactly and a killed run loses at most that epoch.
`best.pt` holds the EMA weights in the official LowFormer key format.

Differences from the released code (github.com/altair199797/LowFormer), all deliberate:
`epochs` counts every epoch including the warm-up (the release trains n_epochs + warmup_epochs);
weight decay is skipped on all 1-D parameters (timm's rule; the release matched the names "norm" and
"bias", so GroupNorm and the attention BatchNorm were decayed); mixup/cutmix use one box and one lam
per batch (timm); timm initialisation (no zero last gamma); no BN-statistics reset before evaluation.

One cohesive job, hence its length: the training loop and its state.
"""
from __future__ import annotations

import contextlib
import logging
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3

from lowformer.core.errors import LowformerError
from lowformer.core.files import atomic_path, ensure_dir
from lowformer.core.progress import Progress, no_progress
from lowformer.training.checkpoint import (CHECKPOINT_FORMAT, epoch_seeds, export_state_dict, load_checkpoint_file,
                                           remove_stale_temporaries, rng_state, save_checkpoint, set_rng_state)
from lowformer.training.distributed import _Dist, _setup_distributed
from lowformer.training.recipe import recipe_for

log = logging.getLogger(__name__)



@dataclass
class TrainConfig:
    model: str
    data: str
    val_data: Optional[str] = None
    out: Optional[str] = None  # run folder; default runs/<model>
    epochs: int = 300
    batch_size: int = 128  # per process
    lr: Optional[float] = None  # peak lr; default recipe.lr_per_128 * total batch / 128
    image_sizes: Tuple[int, ...] = (128, 160, 192, 224)
    eval_size: int = 224
    device: Optional[str] = None  # cpu | cuda; default cuda when available
    amp: bool = False  # float16 + GradScaler on CUDA, bfloat16 autocast on CPU
    workers: int = 4
    accum_steps: int = 1
    num_classes: Optional[int] = None  # default: number of class folders in `data`
    max_steps: Optional[int] = None  # cap on optimizer steps (the schedule spans the capped run)
    seed: int = 0
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    recipe: Dict[str, Any] = field(default_factory=dict)  # overrides of the released recipe
    eval_every: int = 1  # epochs between evaluations on val_data (the last epoch is always evaluated)
    threads: Optional[int] = None  # torch CPU threads per process


# Fields that define the optimisation: a resumed run must agree on all of them.
_RESUME_KEYS = ("model", "classes", "model_kwargs", "num_classes", "epochs", "batch_size", "accum_steps", "lr",
                "image_sizes", "max_steps", "seed", "recipe", "world_size")


class _WarmupEma(ModelEmaV3):
    """timm's EMA with the release's decay warm-up: decay * (1 - exp(-step / warmup_steps))."""

    def __init__(self, model, decay: float, warmup_steps: int):
        super().__init__(model, decay=decay)
        self.warmup_steps = warmup_steps

    def get_decay(self, step: Optional[int] = None) -> float:
        if step is None or self.warmup_steps <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-step / self.warmup_steps))


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

def _resolve_device(name: Optional[str], d: _Dist) -> torch.device:
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise LowformerError(f"--device must be cpu or cuda, not {name!r}")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise LowformerError("--device cuda: no CUDA device is available")
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def _validate(cfg: TrainConfig) -> None:
    checks = [(cfg.epochs >= 1, "--epochs must be at least 1"), (cfg.batch_size >= 1, "--batch-size must be >= 1"),
              (cfg.accum_steps >= 1, "--accum-steps must be >= 1"), (cfg.workers >= 0, "--workers must be >= 0"),
              (bool(cfg.image_sizes) and all(s >= 16 for s in cfg.image_sizes), "--image-sizes must be >= 16 each"),
              (cfg.eval_size >= 16, "--eval-size must be >= 16"), (cfg.eval_every >= 1, "--eval-every must be >= 1"),
              (cfg.max_steps is None or cfg.max_steps >= 1, "--max-steps must be >= 1"),
              (cfg.lr is None or cfg.lr > 0, "--lr must be positive"),
              (cfg.num_classes is None or cfg.num_classes >= 1, "--num-classes must be >= 1")]
    for ok, message in checks:
        if not ok:
            raise LowformerError(message)


def train(cfg: TrainConfig, resume: bool = False, progress: Progress = no_progress) -> Dict[str, Any]:
    """Train (or continue, with `resume`) the run in `cfg.out`; return a summary (see `Trainer.run`).
    Under torchrun every process calls this; only rank 0 writes files and shows progress."""
    _validate(cfg)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    d = _setup_distributed(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        return _Trainer(cfg, d, resume, progress).run()
    finally:
        torch.set_num_threads(threads)
        if d.owned and dist.is_initialized():
            dist.destroy_process_group()


class _Trainer:
    def __init__(self, cfg: TrainConfig, d: _Dist, resume: bool, progress: bool):
        from lowformer.models.registry import resolve

        self.cfg, self.d, self.resume = cfg, d, resume
        self.spec = resolve(cfg.model)
        self.device = _resolve_device(cfg.device, d)
        self.out = Path(cfg.out or os.path.join("runs", self.spec.name.replace(":", "-")))
        self.progress = progress if d.main else no_progress  # only rank 0 shows progress
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    # -- setup ------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> Optional[Dict[str, Any]]:
        last = self.out / "last.pt"
        if self.d.main and self.out.is_dir():
            remove_stale_temporaries(self.out)
        self.d.barrier()
        if last.is_file() and not self.resume:
            raise LowformerError(f"{self.out} already holds a run ({last.name}); pass --resume to continue it "
                                 "or choose another --out")
        if not last.is_file() and self.resume:
            raise LowformerError(f"--resume: no run to continue in {self.out} (no {last.name}); "
                                 "leave out --resume to start one, or give the run's --out")
        if not last.is_file():
            return None
        ckpt = load_checkpoint_file(last)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise LowformerError(f"{last} is not a lowformer training checkpoint")
        return ckpt

    def _build_data(self):
        from lowformer.data.training import (MultiSizeDataset, eval_loader, open_image_folder, train_transforms)

        cfg, r = self.cfg, self.recipe
        folder = open_image_folder(cfg.data, "--data")
        self.classes = list(folder.classes)
        self.num_classes = cfg.num_classes or len(self.classes)
        if self.num_classes < len(self.classes):
            raise LowformerError(f"--num-classes {self.num_classes} is smaller than the {len(self.classes)} "
                                 f"class folders in {cfg.data}")
        self.preprocessing = self.spec.preprocessing(cfg.eval_size)
        p = self.preprocessing
        try:
            tfs = train_transforms(cfg.image_sizes, mean=p.mean, std=p.std, crop_scale=r.crop_scale, hflip=r.hflip,
                                   randaug=r.randaug, reprob=r.reprob)
        except (AssertionError, KeyError, ValueError) as e:
            raise LowformerError(f"bad augmentation settings (randaug {r.randaug!r}, crop_scale {r.crop_scale}): "
                                 f"{e!r}") from None
        self.train_set = MultiSizeDataset(folder, tfs)
        self.val_loader = None
        if cfg.val_data:
            self.val_loader, val_folder = eval_loader(cfg.val_data, p, cfg.batch_size, cfg.workers,
                                                      self.d.rank, self.d.world)
            if val_folder.classes != self.classes:
                raise LowformerError(f"--val-data classes differ from --data classes "
                                     f"({len(val_folder.classes)} vs {len(self.classes)} folders)")
        per_rank = len(folder) // self.d.world
        self.steps_per_epoch = (per_rank // cfg.batch_size) // cfg.accum_steps
        if self.steps_per_epoch < 1:
            raise LowformerError(f"{len(folder)} training images are too few for batch size {cfg.batch_size} x "
                                 f"{cfg.accum_steps} accumulation x {self.d.world} processes")

    def _schedule(self) -> None:
        cfg, r = self.cfg, self.recipe
        spe = self.steps_per_epoch
        self.total_steps = cfg.epochs * spe if cfg.max_steps is None else min(cfg.epochs * spe, cfg.max_steps)
        self.num_epochs = math.ceil(self.total_steps / spe)
        if r.warmup_epochs is None:
            self.warmup_steps = min(round(20 * spe), round(self.total_steps / 15))
        else:
            self.warmup_steps = min(round(r.warmup_epochs * spe), self.total_steps - 1)
        self.total_batch = cfg.batch_size * cfg.accum_steps * self.d.world
        self.lr = cfg.lr if cfg.lr is not None else r.lr_per_128 * self.total_batch / 128

    def _build_model(self) -> None:
        from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.optim import create_optimizer_v2
        from timm.scheduler import CosineLRScheduler
        from timm.data import Mixup

        from lowformer.models.factory import create_model

        cfg, r = self.cfg, self.recipe
        kwargs = dict(cfg.model_kwargs)
        if r.drop_path > 0:
            kwargs.setdefault("drop_path_rate", r.drop_path)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        try:
            model = create_model(cfg.model, num_classes=self.num_classes, **kwargs)
        except TypeError as e:
            raise LowformerError(f"cannot build {cfg.model} with {kwargs}: {e}") from None
        self.model = model.to(self.device).train()
        self.ema = _WarmupEma(self.model, r.ema_decay, r.ema_warmup_steps) if r.ema_decay > 0 else None
        self.optimizer = create_optimizer_v2(self.model, opt="adamw", lr=self.lr, weight_decay=r.weight_decay,
                                             betas=tuple(r.betas), eps=r.eps, filter_bias_and_bn=True)
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=max(1, self.total_steps - self.warmup_steps),
                                           lr_min=r.min_lr, warmup_t=self.warmup_steps, warmup_lr_init=0.0,
                                           warmup_prefix=True, t_in_epochs=False)
        use_scaler = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.autocast_dtype = (torch.float16 if self.device.type == "cuda" else torch.bfloat16) if cfg.amp else None
        self.mixup = None
        if r.mixup_alpha > 0 or r.cutmix_alpha > 0:
            if cfg.batch_size % 2:
                raise LowformerError("mixup/cutmix need an even --batch-size (or --mixup 0 --cutmix 0)")
            self.mixup = Mixup(mixup_alpha=r.mixup_alpha, cutmix_alpha=r.cutmix_alpha, prob=r.mix_prob,
                               switch_prob=0.5, mode="batch", label_smoothing=r.smoothing,
                               num_classes=self.num_classes)
        if r.bce:
            self.criterion = BinaryCrossEntropy(smoothing=r.smoothing)
        elif self.mixup is not None:
            self.criterion = SoftTargetCrossEntropy()
        else:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=r.smoothing)
        self.ddp_model = self.model
        if self.d.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # 1x1 feature maps give 1x1-conv gradients ambiguous strides: harmless, but warned every step
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)

    def _saved_config(self) -> Dict[str, Any]:
        cfg = self.cfg
        return {"model": self.spec.name, "timm_name": self.spec.timm_name, "data": os.path.abspath(cfg.data),
                "val_data": os.path.abspath(cfg.val_data) if cfg.val_data else None,
                "model_kwargs": dict(cfg.model_kwargs), "num_classes": self.num_classes, "classes": self.classes,
                "epochs": cfg.epochs, "batch_size": cfg.batch_size, "accum_steps": cfg.accum_steps,
                "lr": self.lr, "image_sizes": list(cfg.image_sizes), "eval_size": cfg.eval_size,
                "max_steps": cfg.max_steps, "seed": cfg.seed, "recipe": self.recipe.to_dict(),
                "world_size": self.d.world, "total_batch": self.total_batch,
                "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "device": self.device.type, "amp": cfg.amp,
                "workers": cfg.workers, "preprocessing": self.preprocessing.to_dict()}

    def _check_resume(self, saved: Dict[str, Any], now: Dict[str, Any]) -> None:
        for k in _RESUME_KEYS:
            if json.dumps(saved.get(k), sort_keys=True) != json.dumps(now.get(k), sort_keys=True):
                raise LowformerError(f"--resume: {k} differs from the saved run in {self.out} "
                                     f"(saved {saved.get(k)!r}, now {now.get(k)!r}); repeat the original command")

    def _restore(self, ckpt: Dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])  # each epoch reseeds from (seed, epoch, rank) anyway
        self.epoch, self.step, self.elapsed = int(ckpt["epoch"]), int(ckpt["step"]), float(ckpt["elapsed"])
        self.best_top1, self.best_epoch = ckpt["best_top1"], ckpt["best_epoch"]
        self.history = list(ckpt["history"])

    # -- files ------------------------------------------------------------------------------
    def _write_files(self, config: Dict[str, Any], best_model: Optional[torch.nn.Module], top1: Optional[float]):
        """After an epoch: best.pt (when better), then last.pt, then the metrics log. A kill between
        the writes is harmless: last.pt still names the previous epoch, which is then replayed."""
        if not self.d.main:
            return
        if best_model is not None:
            save_checkpoint(self.out / "best.pt", {
                "state_dict": export_state_dict(best_model), "epoch": self.epoch, "top1": top1,
                "arch": self.spec.timm_name, "name": self.spec.name, "num_classes": self.num_classes,
                "model_kwargs": json.dumps(self.cfg.model_kwargs), "key_format":
                    "official" if self.spec.is_lowformer else "timm", "preprocessing": self.preprocessing.to_dict()})
        save_checkpoint(self.out / "last.pt", {
            "format": CHECKPOINT_FORMAT, "epoch": self.epoch, "step": self.step, "elapsed": self.elapsed,
            "best_top1": self.best_top1, "best_epoch": self.best_epoch, "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": {**rng_state(), "next_epoch_seeds":
                                                        epoch_seeds(self.cfg.seed, self.epoch, 0)},
            "config": config, "history": self.history})
        with atomic_path(self.out / "metrics.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(rec) + "\n" for rec in self.history))

    # -- loop -------------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        ckpt = self._prepare_run_dir()
        self.recipe = recipe_for(self.cfg.model, self.cfg.recipe)
        self._build_data()
        self._schedule()
        self._build_model()
        config = self._saved_config()
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        self.best_top1, self.best_epoch, self.history = None, None, []
        resumed_from = None
        if ckpt is not None:
            self._check_resume(ckpt["config"], config)
            self._restore(ckpt)
            resumed_from = self.epoch
        elif self.d.main:  # the run folder appears only once everything has been checked
            from lowformer.core.files import write_json

            ensure_dir(self.out)
            write_json(self.out / "config.json", config)
        self.d.barrier()

        if resumed_from is not None and self.d.main:
            log.info("resuming %s at epoch %d/%d (step %d/%d)", self.out, self.epoch + 1, self.num_epochs,
                     self.step, self.total_steps)
        with self.progress.task("train", self.total_steps, self.step) as bar:
            while self.epoch < self.num_epochs:
                record = self._train_epoch(bar)
                self._end_epoch(record, config)
            final = self._final_eval()
        eval_model = self.ema.module if self.ema is not None else self.model
        summary = {"run_dir": str(self.out.resolve()), "rank": self.d.rank, "model": self.spec.name,
                   "timm_name": self.spec.timm_name, "num_classes": self.num_classes, "world_size": self.d.world,
                   "epochs": self.num_epochs, "steps": self.step, "total_batch": self.total_batch, "lr": self.lr,
                   "resumed_from_epoch": resumed_from, "seconds": round(self.elapsed, 2),
                   "train_loss": self.history[-1]["train_loss"] if self.history else None,
                   "final": final, "best": {"epoch": self.best_epoch, "top1": self.best_top1,
                                            "path": str((self.out / "best.pt").resolve())},
                   "last": str((self.out / "last.pt").resolve()),
                   "metrics": str((self.out / "metrics.jsonl").resolve()),
                   "params": sum(p.numel() for p in eval_model.parameters())}
        if self.d.main:
            from lowformer.core.files import write_json

            write_json(self.out / "summary.json", summary)
        return summary

    def _train_epoch(self, bar) -> Dict[str, Any]:
        from lowformer.data.training import RandomResolutionBatchSampler, train_loader
        from torch.utils.data.distributed import DistributedSampler

        cfg, r, d = self.cfg, self.recipe, self.d
        seeds = epoch_seeds(cfg.seed, self.epoch, d.rank)
        random.seed(seeds["global"])
        np.random.seed(seeds["global"] % 2 ** 32)
        torch.manual_seed(seeds["global"])
        steps_now = min(self.steps_per_epoch, self.total_steps - self.epoch * self.steps_per_epoch)
        first_step = self.epoch * self.steps_per_epoch
        if self.step != first_step:  # a checkpoint is only written at epoch ends
            raise LowformerError(f"checkpoint step {self.step} does not match epoch {self.epoch} start {first_step}")
        sampler = DistributedSampler(self.train_set, num_replicas=d.world, rank=d.rank, shuffle=True,
                                     seed=cfg.seed, drop_last=True)
        batches = RandomResolutionBatchSampler(sampler, cfg.batch_size, cfg.image_sizes, cfg.seed,
                                               max_batches=steps_now * cfg.accum_steps)
        batches.set_epoch(self.epoch)
        loader = train_loader(self.train_set, batches, cfg.workers, pin_memory=self.device.type == "cuda")
        loader.generator.manual_seed(seeds["loader"])

        self.model.train()
        loss_sum, n_micro, images_seen = 0.0, 0, 0
        curve, every = [], max(1, self.steps_per_epoch // 50)
        t0 = time.time()
        mesa_start = None if (r.mesa is None or self.ema is None) else r.mesa[0]
        for i, (images, targets) in enumerate(loader):
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if self.mixup is not None:
                images, targets = self.mixup(images, targets)
            last_micro = (i + 1) % cfg.accum_steps == 0
            sync = contextlib.nullcontext() if (last_micro or d.world == 1) else self.ddp_model.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                    enabled=self.autocast_dtype is not None):
                    logits = self.ddp_model(images)
                    loss = self.criterion(logits, targets)
                    if mesa_start is not None and self._progress_fraction() >= mesa_start:
                        with torch.no_grad():
                            teacher = self.ema.module(images).float()
                        teacher = teacher.sigmoid() if r.bce else teacher.softmax(-1)
                        loss = loss + r.mesa[1] * self.criterion(logits, teacher)
                self.scaler.scale(loss / cfg.accum_steps).backward()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise LowformerError(f"loss is {loss_value} at step {self.step} (lower --lr?)")
            loss_sum += loss_value
            n_micro += 1
            images_seen += images.shape[0] * d.world
            if not last_micro:
                continue
            self.scheduler.step_update(self.step + 1)  # lr of update k is the schedule at k + 1
            if r.clip_grad:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), r.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            if self.ema is not None:
                self.ema.update(self.model, step=self.step)
            if self.step % every == 0 or self.step == first_step + steps_now:
                curve.append([self.step, round(loss_value, 6)])
            lr = self.optimizer.param_groups[0]["lr"]
            ips = images_seen / max(time.time() - t0, 1e-9)
            bar.advance(description=f"epoch {self.epoch + 1}/{self.num_epochs}",
                        status=f"loss {loss_sum / n_micro:.4f}  lr {lr:.2e}  {ips:,.0f} img/s")
        seconds = time.time() - t0
        totals = d.sum(torch.tensor([loss_sum, float(n_micro)], dtype=torch.float64), self.device)
        self.elapsed += seconds
        return {"epoch": self.epoch + 1, "step": self.step, "train_loss": totals[0].item() / max(totals[1].item(), 1),
                "lr": self.optimizer.param_groups[0]["lr"], "images_per_second": round(images_seen / seconds, 2),
                "seconds": round(seconds, 3), "loss_curve": curve}

    def _progress_fraction(self) -> float:
        span = max(1, self.total_steps - self.warmup_steps)
        return max(0, self.step - self.warmup_steps) / span

    def _evaluate(self, model) -> Dict[str, float]:
        from lowformer.data.training import evaluate

        with self.progress.task("eval", len(self.val_loader)) as task:
            return evaluate(model, self.val_loader, self.device, self.autocast_dtype,
                            reduce=lambda t: self.d.sum(t, self.device), on_batch=task.advance)

    def _end_epoch(self, record: Dict[str, Any], config: Dict[str, Any]) -> None:
        self.epoch += 1
        eval_model = self.ema.module if self.ema is not None else self.model
        self.d.broadcast_module(eval_model)  # what every rank evaluates is exactly what rank 0 saves
        last = self.epoch == self.num_epochs
        val = None
        if self.val_loader is not None and (last or self.epoch % self.cfg.eval_every == 0):
            val = self._evaluate(eval_model)
        record["val"] = val
        better = self.val_loader is None or (val is not None and (self.best_top1 is None or
                                                                  val["top1"] > self.best_top1))
        if val is not None and better:
            self.best_top1, self.best_epoch = val["top1"], self.epoch
        elif self.val_loader is None:
            self.best_epoch = self.epoch
        record["best_top1"] = self.best_top1
        self.history.append(record)
        self._write_files(config, eval_model if better else None, val["top1"] if val else None)
        self.d.barrier()
        text = f"epoch {self.epoch}/{self.num_epochs}  loss {record['train_loss']:.4f}  " \
               f"{record['images_per_second']:,.0f} img/s"
        if val is not None:
            text += f"  val top-1 {val['top1']:.2f}%  (best {self.best_top1:.2f}% @ {self.best_epoch})"
        if self.d.main:
            log.info(text)

    def _final_eval(self) -> Optional[Dict[str, float]]:
        """Top-1 of the EMA weights after the last epoch (recorded by that epoch's evaluation)."""
        if self.val_loader is None:
            return None
        last = self.history[-1] if self.history else None
        if last is not None and last.get("val") is not None and last["epoch"] == self.num_epochs:
            return last["val"]
        return self._evaluate(self.ema.module if self.ema is not None else self.model)


