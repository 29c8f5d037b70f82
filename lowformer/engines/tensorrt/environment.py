"""TensorRT environment: the lazy import, version and GPU facts, the next-step command line."""
from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from lowformer.core.errors import LowformerError
from lowformer.engines.tensorrt.config import DEFAULT_WORKSPACE_MB, TrtBuildConfig

log = logging.getLogger(__name__)


def _import_trt():
    import tensorrt as trt  # noqa: deferred so that the package works without TensorRT

    return trt


def tensorrt_status() -> Tuple[bool, str]:
    """(ok, reason): ok only when `tensorrt` imports and a CUDA GPU is visible."""
    try:
        trt = _import_trt()
        version = str(trt.__version__)
    except Exception:  # ImportError, or the PyPI placeholder package failing at import
        return False, "TensorRT is not installed here"
    if not torch.cuda.is_available():
        return False, f"TensorRT {version} is installed but no CUDA GPU is visible here"
    return True, f"TensorRT {version}"


def trt_major(trt) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except ValueError:
        raise LowformerError(f"cannot read the TensorRT version {trt.__version__!r}") from None


def gpu_info(device: Union[int, str, None] = None) -> Dict[str, str]:
    """Name and compute capability of the CUDA device an engine is built for / runs on."""
    index = torch.device(device).index if isinstance(device, str) else device
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    return {"gpu": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def next_step_command(onnx_path: Union[str, os.PathLike], settings: Optional[TrtBuildConfig] = None,
                      engine_path: Union[str, os.PathLike, None] = None, **fields: Any) -> str:
    """The `lowformer build-engine ...` command to run on the target device.

    `settings`: a TrtBuildConfig (lowformer.engines.tensorrt.config), or its fields as keywords
    (fp16, int8, min_batch, opt_batch, max_batch, workspace_mb, timing_cache): each one that is not
    the command's default becomes its flag."""
    settings = TrtBuildConfig.build(settings, **fields)
    fp16, int8, workspace_mb, timing_cache = settings.fp16, settings.int8, settings.workspace_mb, settings.timing_cache
    parts = ["lowformer", "build-engine", str(onnx_path)]
    if engine_path is not None and Path(engine_path) != default_engine_path(onnx_path):
        parts += ["--out", str(engine_path)]
    if fp16:
        parts.append("--fp16")
    if int8:
        parts.append("--int8")
    for flag, value in (("--min-batch", settings.min_batch), ("--opt-batch", settings.opt_batch),
                        ("--max-batch", settings.max_batch)):
        if value not in (None, 1):
            parts += [flag, str(value)]
    if workspace_mb is not None and workspace_mb != DEFAULT_WORKSPACE_MB:
        parts += ["--workspace-mb", str(workspace_mb)]
    if timing_cache is not None:
        parts += ["--timing-cache", str(timing_cache)]
    return " ".join(shlex.quote(p) for p in parts)


def default_engine_path(onnx_path: Union[str, os.PathLike]) -> Path:
    return Path(onnx_path).with_suffix(".engine")


class _Logger:
    """Factory for an ILogger subclass that keeps TensorRT's errors for our one-line messages."""

    @staticmethod
    def create(trt):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: List[str] = []

            def log(self, severity, msg):
                name = str(getattr(severity, "name", severity)).upper()
                if "ERROR" in name:
                    self.errors.append(str(msg).strip())
                    log.error("TensorRT: %s", msg)
                elif "WARNING" in name:
                    log.warning("TensorRT: %s", msg)

            def last_error(self) -> str:
                return self.errors[-1].splitlines()[0] if self.errors else "no error message from TensorRT"

        return Logger()


