"""`lowformer calibrate ...`: INT8 calibration tools (the group and its `sensitivity` command)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import click

from lowformer.commands.errors import handle_errors
from lowformer.commands.options import json_option, options_into
from lowformer.commands.progress import RichProgress
from lowformer.commands.render import emit_json, print_sensitivity


@dataclass(frozen=True)
class SensitivityOptions:
    """What `calibrate sensitivity` measures (their click parameter names; `method_alias`: the old
    spelling --method)."""

    calib_data: str
    eval_data: Optional[str]
    calib_size: int
    eval_size: int
    target: str
    method: str
    method_alias: Optional[str]
    mode: str
    exclude: Tuple[str, ...]
    auto_exclude: bool
    gate_top1_drop: float

    def config(self) -> Any:
        """The lowformer.calibrate.sensitivity.SensitivityConfig."""
        from lowformer.calibrate.sensitivity import SensitivityConfig

        return SensitivityConfig(self.calib_data, self.eval_data, self.calib_size, self.eval_size, self.target,
                                 self.method_alias or self.method, self.mode, tuple(self.exclude), self.auto_exclude,
                                 self.gate_top1_drop)


@dataclass(frozen=True)
class SourceOptions:
    """The FP32 ONNX measured: MODEL's weights (`checkpoint`), `image_size`, and the export folder
    (`out`) it and the calibration cache go into."""

    checkpoint: Optional[str]
    image_size: int
    out: Optional[str]


@click.group("calibrate")
def calibrate_group() -> None:
    """INT8 calibration tools (the calibrated Q/DQ ONNX itself: `lowformer export MODEL --int8`)."""


@calibrate_group.command("sensitivity")
@click.argument("model")
@click.option("--calib-data", required=True, type=click.Path(), help="Calibration image folder.")
@click.option("--eval-data", type=click.Path(),
              help="Held-out image folder [default: a split of --calib-data disjoint from the calibration images].")
@click.option("--checkpoint", type=click.Path(), help="Weights for MODEL (a model name); an export folder has its own.")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(32, 2048))
@click.option("--calib-size", default=512, show_default=True, type=click.IntRange(1, 100000),
              help="Calibration images (as in `export --int8`).")
@click.option("--eval-size", default=200, show_default=True, type=click.IntRange(1, 100000))
@click.option("--target", default="cpu", show_default=True, type=click.Choice(["cpu", "tensorrt", "openvino"]),
              help="INT8 flavour: cpu (u8 activations), tensorrt or openvino (symmetric s8 Q/DQ).")
@click.option("--calib-method", "method", default="percentile", show_default=True,
              type=click.Choice(["percentile", "minmax", "entropy"]),
              help="Activation ranges from the cached histograms (entropy clipped too much on EfficientNet-Lite0).")
@click.option("--method", "method_alias", hidden=True, type=click.Choice(["percentile", "minmax", "entropy"]),
              help="Old spelling of --calib-method (kept for one release).")
@click.option("--mode", default="quantize-one", show_default=True, type=click.Choice(["quantize-one", "float-one"]),
              help="quantize-one: only the block is INT8; float-one: all blocks but this one are INT8.")
@click.option("--exclude", multiple=True, help="Keep modules matching this glob in float in every variant.")
@click.option("--auto-exclude", is_flag=True,
              help="Also find the fastest set of blocks to keep in float that meets the gate: ranked by harm per ms "
                   "of float cost (ONNX Runtime CPU per-block profile of the FP32 and INT8 models; a proxy for "
                   "--target tensorrt/openvino), greedy then pruned; prints the candidates tried.")
@click.option("--gate-top1-drop", type=float, default=1.0, show_default=True,
              help="--auto-exclude gate: top-1 drop vs FP32 in points (disagreement when labels are unknown).")
@click.option("--out", type=click.Path(file_okay=False), help="Export folder for MODEL's FP32 ONNX and the cache.")
@json_option("Print one JSON object to stdout.")
@handle_errors
@options_into("options", SensitivityOptions)
@options_into("source", SourceOptions)
def calibrate_sensitivity_cmd(model: str, options: "SensitivityOptions", source: "SourceOptions",
                              as_json: bool) -> None:
    """Per-block INT8 sensitivity of MODEL (a model name or an export folder) vs FP32 on held-out images.

    Calibrates once (cached), then re-quantizes one block at a time and reports top-1 agreement,
    logit cosine and the top-1 drop (points) of each variant. With --auto-exclude it also profiles
    the FP32 and INT8 models per block on ONNX Runtime's CPU provider and searches for the fastest
    set of float blocks that meets --gate-top1-drop (table of candidates tried, estimated and
    measured latency; --json carries all of it under auto_exclude).
    """
    from lowformer.calibrate.sensitivity import sensitivity_report
    from lowformer.data.preprocess import Preprocessing
    from lowformer.export.pipeline import fp32_onnx

    src, manifest = fp32_onnx(model, source.checkpoint, source.image_size, source.out)
    cfg = options.config()
    report = sensitivity_report(src, Preprocessing.from_dict(manifest.preprocessing),
                                str(manifest.checkpoint.get("sha256") or "unknown"), cfg,
                                model_name=manifest.model_name, progress=RichProgress())
    if as_json:
        return emit_json(report)
    print_sensitivity(report)
