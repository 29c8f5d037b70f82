"""`lowformer build-engine`: a TensorRT engine from an exported ONNX, on the target device."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

import click

from lowformer.commands.errors import handle_errors
from lowformer.commands.options import json_option, options_into
from lowformer.commands.progress import console
from lowformer.commands.render import emit_json, print_engine


@dataclass(frozen=True)
class EngineBuildOptions:
    """How `build-engine` builds (their click parameter names)."""

    fp16: bool
    int8: bool
    min_batch: Optional[int]
    opt_batch: Optional[int]
    max_batch: Optional[int]
    workspace_mb: int
    timing_cache: Optional[str]

    def fields(self) -> Dict[str, Any]:
        """Keywords of lowformer.engines.tensorrt.config.TrtBuildConfig."""
        return asdict(self)


@click.command("build-engine")
@click.argument("onnx_file", metavar="FILE.onnx", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="Engine file [default: FILE.engine beside the ONNX].")
@click.option("--fp16", is_flag=True, help="FP16 engine (from model_fp16.onnx; TensorRT 10 also takes an FP32 ONNX).")
@click.option("--int8", is_flag=True, help="INT8 engine from a Q/DQ ONNX (model_int8.onnx).")
@click.option("--min-batch", type=click.IntRange(1), help="Smallest batch the engine takes [default: the ONNX's fixed batch, else 1].")
@click.option("--opt-batch", type=click.IntRange(1), help="Batch TensorRT tunes for [default: the fixed batch, else --min-batch].")
@click.option("--max-batch", type=click.IntRange(1), help="Largest batch the engine takes [default: the fixed batch, else 32].")
@click.option("--workspace-mb", default=2048, show_default=True, type=click.IntRange(16), help="Builder workspace.")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="Timing cache file reused across builds [default: trt-timing.cache beside the engine].")
@click.option("--lock-timeout", default=600.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to wait while another lowformer process writes into the ONNX's folder.")
@json_option("Print the engine's manifest entry as JSON to stdout.")
@handle_errors
@options_into("build", EngineBuildOptions)
def build_engine_cmd(onnx_file: str, out: Optional[str], build: EngineBuildOptions, lock_timeout: float,
                     as_json: bool) -> None:
    """Build a TensorRT engine from FILE.onnx. Run this on the target device.

    \b
    Edge flow: export, calibrate and validate the ONNX on a workstation, copy the
    folder to the device, then for example:
      lowformer build-engine artifacts/b1-224/model_fp16.onnx --fp16
    The engine is recorded in the folder's manifest.json when there is one.

    \b
    Exit codes: 0 built; 1 error; 3 TensorRT or a CUDA GPU is missing here
    (the message says what to run on the target device).
    """
    from lowformer.engines.tensorrt import build_engine

    with console.status(f"building a TensorRT engine from {onnx_file} (this can take minutes)..."):
        entry = build_engine(onnx_file, out, **build.fields(), lock_timeout=lock_timeout)
    if as_json:
        return emit_json(entry)
    print_engine(entry)
