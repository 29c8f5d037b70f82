"""The `lowformer` command: a thin Click layer over the library (every command is a function call)."""
from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, Optional

import click
from rich.console import Console
from rich.table import Table

from .errors import LowformerError

# Human output goes to stderr so that `--json` leaves stdout to the JSON document alone.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def handle_errors(fn: Callable) -> Callable:
    """Turn user errors into one red line and the error's exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LowformerError as e:
            console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            console.print("[red]interrupted[/red]")
            sys.exit(130)

    return wrapper


def print_table(title: str, columns, rows) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c == columns[0] else "right")
    for r in rows:
        table.add_row(*[str(v) for v in r])
    console.print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lowformer")
def main() -> None:
    """Export, quantize, validate, profile and benchmark LowFormer (and other timm) backbones.

    \b
    Typical flow:
      lowformer export b1 --to onnx --to torchscript --fp16
      lowformer validate artifacts/b1-224 --data imagenet/val
      lowformer profile artifacts/b1-224
      lowformer bench b1 --latency --optit
    """


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
@click.option("--peers", is_flag=True, help="List the paper's peer backbones and their timm names.")
@handle_errors
def models_cmd(as_json: bool, peers: bool) -> None:
    """The LowFormer variants with params, MACs at 224, and published numbers."""
    from .info import model_table, peer_table

    rows = peer_table() if peers else model_table()
    if as_json:
        return emit_json(rows)
    if peers:
        print_table("Peer backbones of the paper", ["peer", "timm name", "in timm"],
                    [(r["peer"], r["timm_name"] or "-", "yes" if r["available"] else "no") for r in rows])
        return
    print_table("LowFormer variants", ["name", "model", "params (M)", "MACs@224 (M)", "top-1", "A40 img/s",
                                       "A40 ms", "weights"],
                [(r["name"], r["display"], f"{r['params'] / 1e6:.2f}", f"{r['macs'] / 1e6:.0f}",
                  r["published"].get("top1", "-"), r["published"].get("gpu_throughput") or "-",
                  r["published"].get("gpu_latency_ms") or "-", "yes" if r["has_weights"] else "none published")
                 for r in rows])


@main.command("info")
@click.argument("model")
@click.option("--checkpoint", type=click.Path(), help="Official LowFormer or timm-format state dict.")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(32, 2048))
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
@handle_errors
def info_cmd(model: str, checkpoint: Optional[str], image_size: int, as_json: bool) -> None:
    """Params, MACs and per-stage output shapes of MODEL (b0 b1 b15 b2 b3 e1 e2 e3, timm:<name>)."""
    from .info import model_info

    data = model_info(model, checkpoint, image_size)
    if as_json:
        return emit_json(data)
    console.print(f"[bold]{data['display']}[/bold]  params {data['params'] / 1e6:.2f} M, "
                  f"MACs {data['macs'] / 1e6:.1f} M at {image_size}x{image_size}, checkpoint: {data['checkpoint']}")
    print_table("Output shapes", ["module", "shape"], [(r["module"], "x".join(map(str, r["shape"])))
                                                       for r in data["stages"]])


# Further commands are added below this line, one block each.


@main.command("export")
@click.argument("model")
@click.option("--to", "to", multiple=True, type=click.Choice(["torchscript", "onnx", "trt"]), default=("onnx",),
              show_default=True, help="Target format; give several times for several.")
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
@click.option("--calib-data", type=click.Path(), help="INT8: calibration image folder.")
@click.option("--calib-size", default=512, show_default=True, type=click.IntRange(1, 100000))
@click.option("--calib-method", default="entropy", show_default=True, type=click.Choice(["entropy", "minmax", "percentile"]))
@click.option("--target", "int8_target", default="cpu", show_default=True, type=click.Choice(["cpu", "tensorrt"]),
              help="INT8 flavour: cpu (u8 activations, x86 VNNI) or tensorrt (symmetric s8).")
@click.option("--exclude", multiple=True, help="INT8: keep modules matching this glob in float (e.g. 'stages.3.*.attn').")
@click.option("--auto-exclude", is_flag=True, help="INT8: keep the most harmful blocks in float until the gate holds.")
@click.option("--gate-top1-drop", type=float, default=1.0, show_default=True, help="INT8 --auto-exclude gate (points).")
@click.option("--min-batch", default=1, show_default=True, type=click.IntRange(1))
@click.option("--opt-batch", default=1, show_default=True, type=click.IntRange(1))
@click.option("--max-batch", default=1, show_default=True, type=click.IntRange(1))
@click.option("--workspace-mb", default=2048, show_default=True, type=click.IntRange(16))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object to stdout (human output goes to stderr).")
@handle_errors
def export_cmd(model, to, fp16, int8, checkpoint, image_size, batch_size, dynamic_batch, opset, out, no_fuse,
               data, calib_data, calib_size, calib_method, int8_target, exclude, auto_exclude, gate_top1_drop,
               min_batch, opt_batch, max_batch, workspace_mb, as_json):
    """Fuse MODEL and export it (TorchScript, ONNX, FP16/INT8 ONNX, TensorRT), checking parity.

    \b
    Exit codes: 0 all artifacts written and passed parity; 1 error or failed parity;
    3 the ONNX is ready but the TensorRT engine must be built on a machine with TensorRT and a GPU.
    """
    from .export.pipeline import export_model

    if batch_size and dynamic_batch:
        raise click.UsageError("--batch-size and --dynamic-batch exclude each other")
    calib = dict(calib_data=calib_data, calib_size=calib_size, method=calib_method, target=int8_target,
                 exclude=list(exclude), auto_exclude=auto_exclude, gate_top1_drop=gate_top1_drop) if int8 else None
    with console.status(f"exporting {model}..."):
        result = export_model(model, to=to, fp16=fp16, int8=int8, checkpoint=checkpoint, image_size=image_size,
                              batch_size=batch_size, opset=opset, out=out, do_fuse=not no_fuse, data=data,
                              calib=calib, trt_build=dict(min_batch=min_batch, opt_batch=opt_batch,
                                                          max_batch=max_batch, workspace_mb=workspace_mb),
                              log=lambda s: console.print(s, highlight=False))
    if as_json:
        emit_json(result.to_dict())
    else:
        print_table(f"Exported to {result.out}", ["artifact", "format", "precision", "rel-L2", "cosine", "top-1 agree",
                                                  "parity"],
                    [(a["path"], a["format"], a["precision"], f"{a['parity']['rel_l2']:.2e}",
                      f"{a['parity']['cosine']:.6f}", f"{a['parity']['top1_agreement']:.1%}",
                      "pass" if a["parity"]["passed"] else "FAIL") for a in result.artifacts if "parity" in a])
        for step in result.next_steps:
            console.print(f"[bold]next step:[/bold] {step}", highlight=False, soft_wrap=True)
    sys.exit(result.exit_code)


@main.command("build-engine")
@click.argument("onnx_file", metavar="FILE.onnx", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help="Engine file [default: FILE.engine beside the ONNX].")
@click.option("--fp16", is_flag=True, help="FP16 engine (from model_fp16.onnx; TensorRT 10 also takes an FP32 ONNX).")
@click.option("--int8", is_flag=True, help="INT8 engine from a Q/DQ ONNX (model_int8.onnx).")
@click.option("--min-batch", default=1, show_default=True, type=click.IntRange(1), help="Smallest batch the engine takes.")
@click.option("--opt-batch", default=1, show_default=True, type=click.IntRange(1), help="Batch TensorRT tunes for.")
@click.option("--max-batch", default=1, show_default=True, type=click.IntRange(1), help="Largest batch the engine takes.")
@click.option("--workspace-mb", default=2048, show_default=True, type=click.IntRange(16), help="Builder workspace.")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="Timing cache file reused across builds [default: trt-timing.cache beside the engine].")
@click.option("--json", "as_json", is_flag=True, help="Print the engine's manifest entry as JSON to stdout.")
@handle_errors
def build_engine_cmd(onnx_file: str, out: Optional[str], fp16: bool, int8: bool, min_batch: int, opt_batch: int,
                     max_batch: int, workspace_mb: int, timing_cache: Optional[str], as_json: bool) -> None:
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
    from .engines.tensorrt import build_engine

    with console.status(f"building a TensorRT engine from {onnx_file} (this can take minutes)..."):
        entry = build_engine(onnx_file, out, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                             workspace_mb=workspace_mb, timing_cache=timing_cache, fp16=fp16, int8=int8)
    if as_json:
        return emit_json(entry)
    b = entry["build"]
    console.print(f"wrote {entry['path']}: {entry['precision']}, batch {b['min_batch']}..{b['max_batch']}, "
                  f"TensorRT {entry['tensorrt']} on {entry['gpu']} (sm {entry['compute_capability']}), "
                  f"sha256 {entry['sha256'][:12]}", highlight=False, soft_wrap=True)
    for w in entry.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)


@main.command("validate")
@click.argument("artifacts", nargs=-1, required=True, metavar="ARTIFACT_OR_MANIFEST...")
@click.option("--data", required=True, type=click.Path(), help="val/<wnid>/*.JPEG folder, or a flat folder with --labels.")
@click.option("--labels", type=click.Path(), help="LOC_val_solution.csv, or lines of '<file> <wnid-or-index>'.")
@click.option("--limit", type=int, help="Validate a deterministic, class-stratified subset of N images.")
@click.option("--batch-size", default=50, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workers", type=click.IntRange(0, 64), help="DataLoader decode workers [default: cores-1, max 4].")
@click.option("--reference", help="Reference MODEL (default: the one in the artifacts' manifest).")
@click.option("--checkpoint", type=click.Path(), help="Weights of --reference (omit: random init).")
@click.option("--gate-top1-drop", type=float, help="Max top-1 drop in pt vs the reference [fp16 0.2, int8 1.0].")
@click.option("--gate-agreement", type=float, help="Min top-1 agreement with the reference, 0..1 [fp32 0.999, fp16 0.995].")
@click.option("--crop-ratio", type=float, help="Override the manifest's crop/resize ratio (e.g. 0.875).")
@click.option("--interpolation", type=click.Choice(["bicubic", "bilinear", "nearest"]), help="Override the resize filter.")
@click.option("--mean", help="Override normalization mean, e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Override normalization std, e.g. 0.229,0.224,0.225.")
@click.option("--skip-bad-images", is_flag=True, help="Skip (and list) unreadable images instead of failing.")
@click.option("--report", type=click.Path(), help="Write the full result (incl. flipped images) as JSON.")
@click.option("--threads", type=click.IntRange(1, 256), help="Inference threads (torch and ONNX Runtime).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
@handle_errors
def validate_cmd(artifacts, data, labels, limit, batch_size, workers, reference, checkpoint, gate_top1_drop,
                 gate_agreement, crop_ratio, interpolation, mean, std, skip_bad_images, report, threads,
                 as_json) -> None:
    """ImageNet top-1/top-5 of every artifact against the PyTorch reference, on the same images.

    \b
    Exit code 0 only if every artifact passes its gate:
      fp32: top-1 agreement >= 99.9%;  fp16: drop <= 0.2 pt and agreement >= 99.5%;  int8: drop <= 1.0 pt.
    The outcome is also recorded under "validation" in each artifact's manifest entry.
    """
    from .validate import parse_triplet, progress_bar, validate

    mean, std = parse_triplet(mean, "--mean"), parse_triplet(std, "--std")
    with progress_bar(console) as progress:
        result = validate(list(artifacts), data, labels=labels, limit=limit, batch_size=batch_size, workers=workers,
                          reference=reference, checkpoint=checkpoint, gate_top1_drop=gate_top1_drop,
                          gate_agreement=gate_agreement, crop_ratio=crop_ratio, interpolation=interpolation,
                          mean=mean, std=std,
                          skip_bad_images=skip_bad_images, report=report, threads=threads, progress=progress)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    if as_json:
        emit_json(result.to_dict())
    else:
        d = result.data
        print_table(f"{d['images']} images, labels: {d['label_source']}", result.COLUMNS, result.rows())
        for a in result.artifacts:
            for f in a.failures:
                console.print(f"[red]{a.name}:[/red] {f}", highlight=False, soft_wrap=True)
    if not result.passed:
        sys.exit(1)
