"""PyTorch eager and TorchScript runners."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import LowformerError
from .base import InputSpec, Runner


def _torch_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise LowformerError("--device cuda asked for, but torch sees no CUDA GPU on this machine")
    return torch.device("cuda" if device == "cuda" else "cpu")


class _TorchModuleRunner(Runner):
    native = "torch"

    def __init__(self, module: nn.Module, input_spec: InputSpec, precision: str = "fp32",
                 device: str = "cpu", threads: Optional[int] = None, path: Optional[str] = None):
        super().__init__(input_spec, precision, device, threads, path)
        if threads:
            torch.set_num_threads(threads)
        self._device = _torch_device(device)
        self.module = module.to(self._device).eval()
        self.provider = self._device.type

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.module(x.to(self._device))
        if self._device.type == "cuda":
            torch.cuda.synchronize()
        return out.float().cpu()


class PyTorchRunner(_TorchModuleRunner):
    """An eager nn.Module (the reference every artifact is compared against)."""

    backend = "pytorch"


class TorchScriptRunner(_TorchModuleRunner):
    backend = "torchscript"

    @classmethod
    def from_file(cls, path: str, input_spec: InputSpec, device: str = "cpu",
                  threads: Optional[int] = None) -> "TorchScriptRunner":
        try:
            module = torch.jit.load(path, map_location="cpu")
        except Exception as e:
            raise LowformerError(f"cannot load TorchScript file {path}: {str(e).splitlines()[0]}") from None
        if device == "cpu":
            module = optimize_loaded(module)
        return cls(module, input_spec, "fp32", device, threads, path)


def optimize_loaded(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """`torch.jit.optimize_for_inference` on a loaded frozen module.

    Its output (MKLDNN-prepacked constants) cannot be saved and loaded again by torch, so export
    saves the frozen module and this pass runs when the artifact is loaded.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.optimize_for_inference(module)
