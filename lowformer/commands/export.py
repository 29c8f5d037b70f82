"""`lowformer export`: fuse a model and write its artifacts, checking parity."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import click

from lowformer.commands.errors import handle_errors
from lowformer.commands.options import RegistryChoice, export_targets, json_option, option_group, options_into
from lowformer.commands.progress import RichProgress, console
from lowformer.commands.render import emit_json, print_export


@dataclass(frozen=True)
class Int8Options:
    """The INT8 options of `export --int8` (their click parameter names)."""

    calib_data: Optional[str]
    calib_size: int
    calib_method: str
    int8_target: str
    quantizer: Optional[str]
    weight_bits: str
    exclude: Tuple[str, ...]
    auto_exclude: bool
    gate_top1_drop: float
    qat_steps: int
    qat_batch_size: int
    qat_lr: float
    qat_data: Optional[str]
    qat_teacher: Optional[str]
    qat_device: str

    def calib(self) -> Dict[str, Any]:
        """The `calib` argument of `export_model`."""
        return dict(calib_data=self.calib_data, calib_size=self.calib_size, method=self.calib_method,
                    target=self.int8_target, exclude=list(self.exclude), auto_exclude=self.auto_exclude,
                    gate_top1_drop=self.gate_top1_drop, quantizer=self.quantizer, weight_bits=self.weight_bits,
                    qat=dict(qat_steps=self.qat_steps, qat_batch_size=self.qat_batch_size, qat_lr=self.qat_lr,
                             qat_data=self.qat_data, qat_teacher=self.qat_teacher, qat_device=self.qat_device))


@dataclass(frozen=True)
class TrtBuildOptions:
    """The TensorRT optimization profile and workspace of the engine `export --to trt` builds."""

    min_batch: Optional[int]
    opt_batch: Optional[int]
    max_batch: Optional[int]
    workspace_mb: int

    def as_dict(self) -> Dict[str, Any]:
        """The `trt_build` argument of `export_model`."""
        return dict(min_batch=self.min_batch, opt_batch=self.opt_batch, max_batch=self.max_batch,
                    workspace_mb=self.workspace_mb)


@dataclass(frozen=True)
class TargetOptions:
    """What `export` writes: the targets (`--to`), and the FP16 / INT8 versions too."""

    to: Tuple[str, ...]
    fp16: bool
    int8: bool


@dataclass(frozen=True)
class GraphOptions:
    """The exported graph: the weights, the input (`image_size`, a fixed `batch_size` or a dynamic
    batch axis), the opset, and whether BatchNorm is folded first (`no_fuse`: not)."""

    checkpoint: Optional[str]
    image_size: int
    batch_size: Optional[int]
    dynamic_batch: bool
    opset: int
    no_fuse: bool


@dataclass(frozen=True)
class OutputOptions:
    """Where `export` writes (`out`), how long it waits for another writer there (`lock_timeout`),
    and whether it prints JSON (`as_json`)."""

    out: Optional[str]
    lock_timeout: float
    as_json: bool


int8_option_group = option_group(
    "int8_options", Int8Options,
    click.option("--calib-data", type=click.Path(), help="INT8: calibration image folder."),
    click.option("--calib-size", default=512, show_default=True, type=click.IntRange(1, 100000)),
    click.option("--calib-method", default="percentile", show_default=True,
                 type=click.Choice(["entropy", "minmax", "percentile"])),
    click.option("--target", "int8_target", default="cpu", show_default=True,
                 type=click.Choice(["cpu", "tensorrt", "openvino"]),
                 help="INT8 flavour: cpu (u8 activations, x86 VNNI), tensorrt (symmetric s8) or openvino (for "
                      "OpenVINO's CPU plugin: symmetric s8 Q/DQ, or NNCF's; with --to openvino also as IR)."),
    click.option("--quantizer", type=click.Choice(["qdq", "nncf"]),
                 help="INT8 with --target openvino: qdq (our Q/DQ ONNX, also as IR) or nncf (IR only, needs --to "
                      "openvino) [default: qdq; nncf for an IR with 7-bit weights (--weight-bits), see README]."),
    click.option("--weight-bits", default="auto", show_default=True, type=click.Choice(["auto", "7", "8"]),
                 help="INT8 weights of the x86 targets (cpu, openvino Q/DQ, NNCF's overflow fix): auto = 7-bit when "
                      "this CPU has no VNNI/AMX (its u8 x s8 kernels saturate), else 8-bit; give 7 for an artifact "
                      "bound for such a CPU. --target tensorrt: 8-bit."),
    click.option("--exclude", multiple=True,
                 help="INT8: keep modules matching this glob in float (e.g. 'stages.3.*.attn')."),
    click.option("--auto-exclude", is_flag=True,
                 help="INT8: keep blocks in float until the gate holds, choosing the fastest set found: blocks ranked "
                      "by accuracy harm per ms their float version costs (ONNX Runtime CPU profile; a stated proxy "
                      "for --target tensorrt/openvino); prints every candidate tried."),
    click.option("--gate-top1-drop", type=float, default=1.0, show_default=True,
                 help="INT8 --auto-exclude gate (points)."),
    click.option("--qat-steps", type=click.IntRange(0), default=0, show_default=True,
                 help="INT8: after calibration, distill the Q/DQ model toward the FP32 model's logits for this many "
                      "steps (same placement, ranges and exclusions; no labels); the post-training model is kept as "
                      "model_int8_ptq.onnx. EfficientNet-Lite0 at 224: 200 steps took 5.4 min on 2 CPU cores (AVX2)."),
    click.option("--qat-batch-size", type=click.IntRange(1), default=16, show_default=True,
                 help="INT8 distillation: images a step."),
    click.option("--qat-lr", type=click.FloatRange(min=0, min_open=True), default=1e-5, show_default=True,
                 help="INT8 distillation: Adam's learning rate (cosine-decayed)."),
    click.option("--qat-data", type=click.Path(), help="INT8 distillation: an image folder to distill on (labels unused) "
                                                       "[default: the calibration images]."),
    click.option("--qat-teacher", type=click.Path(dir_okay=False),
                 help="INT8 distillation: an ONNX whose logits to follow [default: the FP32 model]."),
    click.option("--qat-device", default="cpu", show_default=True, help="INT8 distillation: cpu or cuda."),
)

trt_build_option_group = option_group(
    "trt_build", TrtBuildOptions,
    click.option("--min-batch", type=click.IntRange(1),
                 help="TensorRT profile [default: the ONNX's fixed batch, else 1]."),
    click.option("--opt-batch", type=click.IntRange(1),
                 help="TensorRT profile [default: the fixed batch, else --min-batch]."),
    click.option("--max-batch", type=click.IntRange(1), help="TensorRT profile [default: the fixed batch, else 32]."),
    click.option("--workspace-mb", default=2048, show_default=True, type=click.IntRange(16)),
)


@click.command("export")
@click.argument("model")
@click.option("--to", "to", multiple=True, type=RegistryChoice(export_targets),
              default=("onnx",), show_default=True,
              help="Target format; give several times for several (trt and tensorrt are the same).")
@click.option("--fp16", is_flag=True, help="Also write the mixed-precision FP16 ONNX (and build the engine from it).")
@click.option("--int8", is_flag=True, help="Also write the calibrated Q/DQ INT8 ONNX (needs --calib-data).")
@click.option("--checkpoint", type=click.Path(), help="Official LowFormer or timm-format state dict (else random init).")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(32, 2048))
@click.option("--batch-size", type=click.IntRange(1, 4096), help="Fix the batch size (default: dynamic batch axis).")
@click.option("--dynamic-batch", is_flag=True, help="Dynamic batch axis (the default).")
@click.option("--opset", default=17, show_default=True, type=int)
@click.option("--out", type=click.Path(file_okay=False), help="Output folder [default: artifacts/<model>-<size>].")
@click.option("--no-fuse", is_flag=True, help="Do not fold BatchNorm into convolutions before export.")
@click.option("--data", type=click.Path(), help="Image folder: real images join the parity check.")
@int8_option_group
@click.option("--keep-f32", "keep_f32", multiple=True, metavar="BLOCK",
              help="Float OpenVINO IRs (model.xml, model_fp16.xml): keep these blocks (or module globs, e.g. "
                   "'stem', 'blocks.1.*') at f32 when the IR runs at --precision bf16/f16: fewer flips for some "
                   "speed (README) [default: none].")
@trt_build_option_group
@click.option("--lock-timeout", default=600.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to wait while another lowformer process writes into --out.")
@json_option("Print one JSON object to stdout (human output goes to stderr).")
@handle_errors
@options_into("targets", TargetOptions)
@options_into("graph", GraphOptions)
@options_into("output", OutputOptions)
def export_cmd(model: str, targets: TargetOptions, graph: GraphOptions, data: Optional[str],
               int8_options: Int8Options, keep_f32: Tuple[str, ...], trt_build: TrtBuildOptions,
               output: OutputOptions) -> None:
    """Fuse MODEL and export it (TorchScript, ONNX, FP16/INT8 ONNX, TensorRT), checking parity.

    \b
    Exit codes: 0 all artifacts written and passed parity; 1 error or failed parity;
    3 the ONNX is ready but the TensorRT engine must be built on a machine with TensorRT and a GPU.
    """
    from lowformer.export.pipeline import export_model

    if graph.batch_size and graph.dynamic_batch:
        raise click.UsageError("--batch-size and --dynamic-batch exclude each other")
    if int8_options.qat_steps and not targets.int8:
        raise click.UsageError("--qat-steps fine-tunes the INT8 model: give --int8 (and --calib-data) too")
    with console.status(f"exporting {model}..."):
        result = export_model(model, to=targets.to, fp16=targets.fp16, int8=targets.int8, checkpoint=graph.checkpoint,
                              image_size=graph.image_size, batch_size=graph.batch_size, opset=graph.opset,
                              out=output.out, do_fuse=not graph.no_fuse, data=data,
                              calib=int8_options.calib() if targets.int8 else None, trt_build=trt_build.as_dict(),
                              progress=RichProgress(), lock_timeout=output.lock_timeout, keep_f32=keep_f32 or None)
    if output.as_json:
        emit_json(result.to_dict())
    else:
        print_export(result)
    sys.exit(result.exit_code)
