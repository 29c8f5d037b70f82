"""Quantization-aware distillation: fine-tune a post-training Q/DQ INT8 model's weights so its logits
follow the FP32 model's, on unlabeled images (KL divergence at a temperature; no labels needed).

What trains is the Q/DQ graph itself (lowformer.calibrate.qdq_torch): the calibrated activation ranges,
the target's placement, signedness, weight bits and exclusions stay exactly as post-training
quantization wrote them; only the FP32 weights (and biases, LayerNorm affines) move, each step
fake-quantized as ONNX Runtime will quantize it. The caller writes the trained weights back into the
FP32 ONNX and quantizes again with the same ranges: the same graph that every runtime already takes.

Teacher logits are computed once per image and per horizontal flip (the only augmentation: cheap,
label-preserving, and it doubles 256 calibration images into 512 views). A run saves its state
(weights, Adam moments, the sampler's generator, the loss curve) every few steps into the export's
calibration cache, atomically; an interrupted export resumes from it.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from lowformer.core.config import Config
from lowformer.core.errors import LowformerError
from lowformer.core.files import atomic_path
from lowformer.core.progress import Progress, no_progress

log = logging.getLogger(__name__)
TEACHER_BATCH = 16
LOSS_POINTS = 50  # the loss curve the manifest keeps: at most this many (step, mean loss) points


@dataclass(frozen=True)
class DistillConfig(Config):
    """`qat_steps`: optimizer steps (0: no distillation); `qat_batch_size` images a step;
    `qat_lr`: Adam's learning rate (cosine-decayed to 0); `qat_temperature`: of the KL divergence;
    `qat_data`: an image folder to distill on instead of the calibration images (its labels are not
    used); `qat_teacher`: an ONNX whose logits to follow (default: the FP32 model being quantized);
    `qat_device`: cpu or cuda; `qat_seed`: the sampler's seed."""

    qat_steps: int = 0
    qat_batch_size: int = 16
    qat_lr: float = 1e-5
    qat_temperature: float = 1.0
    qat_data: Optional[str] = None
    qat_teacher: Optional[str] = None
    qat_device: str = "cpu"
    qat_seed: int = 0

    @property
    def enabled(self) -> bool:
        return self.qat_steps > 0

    def check(self, int8: bool = True) -> None:
        if self.qat_steps < 0:
            raise LowformerError(f"--qat-steps must be >= 0 (got {self.qat_steps})")
        if self.enabled and not int8:
            raise LowformerError("--qat-steps fine-tunes an INT8 model: give --int8 (and --calib-data) too")
        if self.qat_batch_size < 1:
            raise LowformerError(f"--qat-batch-size must be >= 1 (got {self.qat_batch_size})")
        if not (self.qat_lr > 0 and math.isfinite(self.qat_lr)):
            raise LowformerError(f"--qat-lr must be a positive number (got {self.qat_lr})")
        if not (self.qat_temperature > 0 and math.isfinite(self.qat_temperature)):
            raise LowformerError(f"the distillation temperature must be positive (got {self.qat_temperature})")
        if self.qat_device not in ("cpu", "cuda") and not self.qat_device.startswith("cuda:"):
            raise LowformerError(f"--qat-device {self.qat_device!r}: use cpu or cuda")


class DistillationFailed(LowformerError):
    """Distillation gave no usable model: the export keeps the post-training one and fails."""

    def __init__(self, message: str, step: Optional[int] = None):
        super().__init__(message)
        self.step = step


class DistillationDiverged(DistillationFailed):
    """The loss became NaN or infinite: the run stops at that step, the post-training model stays."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"quantization-aware distillation stopped at step {step}: the loss is {loss} "
                         "(lower --qat-lr); the post-training INT8 model is kept", step)


def teacher_logits(teacher: Path, images: np.ndarray, progress: Progress = no_progress) -> np.ndarray:
    """The teacher ONNX's logits for `images` and for their horizontal flips: (2, N, classes)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(teacher), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    batch = fixed if isinstance(fixed, int) and fixed > 0 else TEACHER_BATCH
    views = (images, images[..., ::-1])
    out: List[np.ndarray] = []
    with progress.task("teacher logits", total=2 * math.ceil(len(images) / batch)) as task:
        for view in views:
            rows = []
            for i in range(0, len(view), batch):
                chunk = np.ascontiguousarray(view[i:i + batch])
                if len(chunk) < batch and isinstance(fixed, int) and fixed > 0:
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
                rows.append(session.run(None, {name: chunk})[0][:min(batch, len(view) - i)])
                task.advance()
            out.append(np.concatenate(rows))
    logits = np.stack(out).astype(np.float32)
    if not np.isfinite(logits).all():
        raise LowformerError(f"the teacher {teacher.name} gives non-finite logits on the distillation images")
    return logits


def _kl(student, teacher, temperature: float):
    import torch.nn.functional as F

    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                    reduction="batchmean") * t * t


def _load_state(path: Optional[Path], key: str) -> Optional[Dict[str, Any]]:
    import torch

    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: start again rather than fail
        log.warning("QAT state %s unreadable (%s): starting from the post-training weights", path.name, e)
        return None
    return state if isinstance(state, dict) and state.get("key") == key else None


def _save_state(path: Optional[Path], state: Dict[str, Any]) -> None:
    import torch

    if path is None:
        return
    with atomic_path(path) as tmp:
        torch.save(state, str(tmp))


def distill(graph, images: np.ndarray, teacher: np.ndarray, config: DistillConfig, *,
            state_file: Optional[Path] = None, state_key: str = "",
            progress: Progress = no_progress) -> Dict[str, Any]:
    """Train `graph` (a QDQGraph) for `config.qat_steps` steps toward the `teacher` logits of
    `images` (`teacher_logits`' layout); return the facts the manifest records.

    `state_file`/`state_key`: where the run's state is saved every few steps, and what it must match
    to be resumed (the post-training model, the images, the options)."""
    import torch

    c = config
    if len(images) < c.qat_batch_size:
        raise LowformerError(f"quantization-aware distillation: {len(images)} image(s) are fewer than "
                             f"--qat-batch-size {c.qat_batch_size}")
    width = _output_width(graph, images[:c.qat_batch_size])
    if teacher.shape[-1] != width:
        raise LowformerError(f"the teacher gives {teacher.shape[-1]} outputs but the INT8 model {width}: "
                             "distill from a teacher of the same classes")
    device = torch.device(c.qat_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LowformerError("--qat-device cuda: no CUDA device is available here")
    graph.to_device(device)
    params = [p for p in graph.parameters() if p.requires_grad]
    optim = torch.optim.Adam(params, lr=c.qat_lr)
    gen = torch.Generator().manual_seed(c.qat_seed)
    losses: List[float] = []
    start = 0
    saved = _load_state(state_file, state_key)
    if saved is not None:
        graph.load_state_dict(saved["model"])
        optim.load_state_dict(saved["optim"])
        gen.set_state(saved["generator"])
        losses, start = [float(v) for v in saved["losses"]], int(saved["step"])
        log.info("QAT: resuming at step %d of %d from %s", start, c.qat_steps, state_file)
    x_all = torch.from_numpy(np.ascontiguousarray(images))
    t_all = torch.from_numpy(teacher)
    every = max(5, c.qat_steps // 20)
    began = time.perf_counter()
    graph.train()
    # Gradients of the fake-quantized graph underflow into denormals: without flushing them, steps on
    # this CPU took 10-20x longer (52 s instead of 2.6 s for EfficientNet-Lite0, 16 images).
    flush = torch.set_flush_denormal(True)
    try:
        with progress.task("distilling INT8", total=c.qat_steps, completed=start) as task:
            for step in range(start, c.qat_steps):
                idx = torch.randperm(len(images), generator=gen)[:c.qat_batch_size]
                flip = torch.randint(0, 2, (c.qat_batch_size,), generator=gen).bool()
                x = x_all[idx]
                x = torch.where(flip[:, None, None, None], x.flip(-1), x).to(device)
                target = torch.where(flip[:, None], t_all[1][idx], t_all[0][idx]).to(device)
                for group in optim.param_groups:  # cosine decay to zero over the run
                    group["lr"] = c.qat_lr * 0.5 * (1 + math.cos(math.pi * step / c.qat_steps))
                loss = _kl(graph(x), target, c.qat_temperature)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise DistillationDiverged(step + 1, value)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                losses.append(value)
                task.advance(1, status=f"KL {np.mean(losses[-every:]):.4f}")
                if (step + 1) % every == 0 and step + 1 < c.qat_steps:
                    _save_state(state_file, {"key": state_key, "step": step + 1, "model": graph.state_dict(),
                                             "optim": optim.state_dict(), "generator": gen.get_state(),
                                             "losses": losses})
    finally:
        if flush:
            torch.set_flush_denormal(False)
    graph.eval()
    graph.to_device(torch.device("cpu"))
    seconds = time.perf_counter() - began
    if state_file is not None:
        state_file.unlink(missing_ok=True)
    return {"steps": c.qat_steps, "batch_size": c.qat_batch_size, "lr": c.qat_lr, "schedule": "cosine",
            "temperature": c.qat_temperature, "images": int(len(images)), "views": "image + horizontal flip",
            "loss": "KL(teacher || student) on logits", "loss_curve": _curve(losses),
            "resumed_from_step": start or None, "seconds": round(seconds, 1), "device": str(device),
            "trained_tensors": len(params)}


def _output_width(graph, batch: np.ndarray) -> int:
    import torch

    with torch.no_grad():
        return int(graph(torch.from_numpy(np.ascontiguousarray(batch))).shape[-1])


def _curve(losses: List[float]) -> List[Tuple[int, float]]:
    """(step, mean loss over the steps since the previous point), at most LOSS_POINTS points."""
    if not losses:
        return []
    size = max(1, math.ceil(len(losses) / LOSS_POINTS))
    return [(min(i + size, len(losses)), round(float(np.mean(losses[i:i + size])), 5))
            for i in range(0, len(losses), size)]
