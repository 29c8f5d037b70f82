"""`lowformer profile`: per-layer latency of artifacts (or models), mapped to model blocks."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

import click

from lowformer.commands.errors import handle_errors
from lowformer.commands.options import ModelOptions, RunOptions, options_into, runtime_options
from lowformer.commands.progress import RichProgress, console
from lowformer.commands.render import emit_json, print_reports


@dataclass(frozen=True)
class ProfileTimingOptions:
    """The profiled calls of `profile` (their click parameter names)."""

    batch_size: int
    iterations: int
    warmup: int

    def fields(self) -> Dict[str, Any]:
        """Keywords of lowformer.profiling.config.ProfileConfig."""
        return asdict(self)


@dataclass(frozen=True)
class ProfileOutputOptions:
    """What `profile` shows and writes: the table (`group_by`, `top`), `--json`, `--plot`, and whether
    the manifests get the per-block times (`no_record`)."""

    group_by: str
    top: int
    json_path: Optional[str]
    plot_path: Optional[str]
    no_record: bool


@dataclass(frozen=True)
class TrtexecOptions:
    """Profiles recorded on the target device, also reported: `--trt-profile` / `--trt-layers`
    (trtexec's files made on a GPU machine) and `--etdump` (an ExecuTorch ETDump from a phone or board)."""

    trt_profile: Optional[str]
    trt_layers: Optional[str]
    etdump: Optional[str]


@click.command("profile")
@click.argument("targets", nargs=-1)
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(1, 4096))
@click.option("--iterations", default=100, show_default=True, type=click.IntRange(1),
              help="Profiled calls (and as many un-instrumented calls for the latency).")
@click.option("--warmup", default=20, show_default=True, type=click.IntRange(0))
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--group-by", default="layer", show_default=True, type=click.Choice(["layer", "block", "stage", "kind"]),
              help="Grouping of the top-N table (stage and kind shares are always shown).")
@click.option("--top", default=15, show_default=True, type=click.IntRange(1))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the full report as JSON to FILE ('-': stdout).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG: one stacked bar per artifact.")
@click.option("--threads", type=click.IntRange(1), help="Intra-op threads of each runtime (default: the runtime's).")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(32, 2048), help="For MODEL arguments.")
@click.option("--checkpoint", type=click.Path(), help="Weights for MODEL arguments (default: random init).")
@click.option("--trt-profile", type=click.Path(exists=True, dir_okay=False),
              help="Also report a `trtexec --exportProfile` JSON made on a GPU machine.")
@click.option("--trt-layers", type=click.Path(exists=True, dir_okay=False),
              help="Its `trtexec --exportLayerInfo` JSON (names the ONNX nodes of fused layers).")
@click.option("--etdump", type=click.Path(exists=True, dir_okay=False),
              help="Read an ETDump recorded on a phone or board (executor_runner --etdump_path) instead of "
                   "running: TARGET names its .pte (the ETRecord beside it names the blocks).")
@runtime_options
@click.option("--no-record", is_flag=True, help="Do not write the per-block times into the artifacts' manifests.")
@handle_errors
@options_into("timing", ProfileTimingOptions)
@options_into("run", RunOptions)
@options_into("models", ModelOptions)
@options_into("output", ProfileOutputOptions)
@options_into("trtexec", TrtexecOptions)
def profile_cmd(targets: Tuple[str, ...], timing: ProfileTimingOptions, run: RunOptions, models: ModelOptions,
                output: ProfileOutputOptions, trtexec: TrtexecOptions) -> None:
    """Per-layer latency of ARTIFACT_OR_MANIFEST... (or MODEL names, eager), mapped to LowFormer blocks.

    \b
    Rows name PyTorch module paths (stages.2.3.attn...), grouped by block (stages.S.B), stage
    (stem, stages.S, head) and kind (stem, fused MBConv, MBConv, attention, MLP, head, downsample).
    Latency comes from a separate, un-instrumented run; coverage is the share of profiled time
    attributed to named layers.
    """
    from lowformer.profiling import profile, report_from_trtexec
    from lowformer.profiling.api import record_profiles
    from lowformer.profiling.config import ProfileConfig

    trt_profile, trt_layers = trtexec.trt_profile, trtexec.trt_layers
    if not targets and not trt_profile:
        raise click.UsageError("give at least one artifact, manifest, folder or model (or --trt-profile)")
    if trt_layers and not trt_profile:
        raise click.UsageError("--trt-layers goes with --trt-profile")
    if trtexec.etdump and len(targets) != 1:
        raise click.UsageError("--etdump takes the one .pte (or its export folder) it was recorded with")
    config = ProfileConfig.build(**timing.fields(), **run.fields(), **models.fields(), record=False)
    if trtexec.etdump:  # read, not run: nothing is measured here, nothing recorded
        from lowformer.profiling import report_from_recording

        reports = [report_from_recording(trtexec.etdump, targets[0])]
        measured = []
    else:
        reports = profile(list(targets), config, progress=RichProgress()) if targets else []
        measured = list(reports)  # the artifacts' own reports (not the trtexec one): what --no-record skips
    if trt_profile:
        reports.append(report_from_trtexec(trt_profile, trt_layers, label=f"TensorRT ({trt_profile})"))
    _write_json(reports, output.json_path)
    print_reports(console, reports, output.group_by, output.top)
    _plot(reports, output.plot_path, output.group_by)
    if not output.no_record:  # after the table: a folder we cannot write to still shows what was measured
        record_profiles(measured)


def _write_json(reports, json_path: Optional[str]) -> None:
    """--json FILE: every report in one document ('-': stdout)."""
    if not json_path:
        return
    doc = {"schema": 1, "reports": [r.to_dict() for r in reports]}
    if json_path == "-":
        emit_json(doc)
    else:
        from lowformer.core.files import write_json

        write_json(json_path, doc)


def _plot(reports, plot_path: Optional[str], group_by: str) -> None:
    """--plot FILE: one stacked bar per artifact (by stage, or by kind when the table is)."""
    if not plot_path:
        return
    from lowformer.profiling.plot import plot_reports

    plot_reports(reports, plot_path, group_by if group_by in ("stage", "kind") else "stage")
    console.print(f"chart written to {plot_path}", highlight=False)
