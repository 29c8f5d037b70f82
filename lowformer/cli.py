"""The `lowformer` command: a thin Click layer over the library (every command is a function call).

One cohesive job, hence its length: the option surface of every command.
"""
from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, Optional

import click
from rich.table import Table
from rich.text import Text

from lowformer.cli_progress import RichProgress, console, install_logging
from lowformer.core.errors import LowformerError, NeedsTargetDevice

# Library errors name parameters; the user typed flags. Whole-word names only (they have underscores).
PARAMETER_FLAGS = {"calib_data": "--calib-data", "eval_data": "--eval-data", "skip_bad_images": "--skip-bad-images",
                   "calib_size": "--calib-size", "image_size": "--image-size", "batch_size": "--batch-size",
                   "lock_timeout": "--lock-timeout", "skip_missing": "--skip-missing", "int8_target": "--target",
                   "keep_f32": "--keep-f32"}


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


_DEBUG = {"on": False}  # `lowformer --debug CMD`: show tracebacks instead of the one-line error


def error_line(message: str) -> None:
    console.print(Text.assemble(("error:", "red"), " ", speak_flags(message)), highlight=False, soft_wrap=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def handle_errors(fn: Callable) -> Callable:
    """Every failure is one red line and a non-zero exit code, never a traceback (unless --debug).

    LowformerError: its message and exit code. OSError (disk full, read-only, permissions): what the
    system said and the file. Anything else is a bug of ours: its type and first line.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit):
            raise
        except NeedsTargetDevice as e:  # not a failure: the rest runs on the device (exit 3)
            console.print(Text.assemble(("next step:", "bold"), " ", str(e)), highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except LowformerError as e:
            if _DEBUG["on"]:
                raise
            error_line(str(e))
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            error_line("interrupted")
            sys.exit(130)
        except OSError as e:
            if _DEBUG["on"]:
                raise
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            error_line(f"{e.strerror or _first_line(e)}{where}")
            sys.exit(1)
        except Exception as e:  # noqa: BLE001 - the promise is one line, whatever failed
            if _DEBUG["on"]:
                raise
            error_line(f"{type(e).__name__}: {_first_line(e)} (rerun with --debug for the traceback)")
            sys.exit(1)

    return wrapper


def _terminate(signum, frame) -> None:
    # SIGTERM unwinds like an exception, so staging folders and temporaries are removed on the way out
    raise SystemExit(128 + signum)


def speak_flags(message: str) -> str:
    import re

    return re.sub(r"\b(" + "|".join(PARAMETER_FLAGS) + r")\b", lambda m: PARAMETER_FLAGS[m.group(1)], message)


def print_table(title: str, columns, rows) -> None:
    table = Table(title=title)
    for c in columns:  # fold, never cut: a narrow or non-terminal stdout still shows every value whole
        table.add_column(c, justify="left" if c == columns[0] else "right", overflow="fold")
    for r in rows:
        table.add_row(*[str(v) for v in r])
    console.print(table)


class _OneLineErrors(click.Group):
    """Click's own errors (usage, bad option values, Ctrl-C at a prompt) in the format of every other
    error: one `error:` line; usage errors keep Click's exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            message = " ".join(e.format_message().split())
            ctx = getattr(e, "ctx", None)
            if isinstance(e, click.UsageError) and ctx is not None:
                message += f" (see '{ctx.command_path} --help')"
            error_line(message)
            sys.exit(e.exit_code)
        except click.Abort:
            error_line("interrupted")
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)  # an int: the code of click's Exit (--help, --version)


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lowformer")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error instead of one line.")
def main(debug: bool) -> None:
    """Export, quantize, validate, profile and benchmark LowFormer (and other timm) backbones.

    \b
    Typical flow:
      lowformer export b1 --to onnx --to torchscript --fp16
      lowformer validate artifacts/b1-224 --data imagenet/val
      lowformer profile artifacts/b1-224
      lowformer bench b1 --latency --optit

    \b
    Every failure is one `error:` line on stderr: exit code 1 (or the command's own, e.g. 3
    for "run this on the target device"), 2 for a usage error (a missing argument, an unknown
    or bad option), 130 when interrupted.
    """
    import signal

    _DEBUG["on"] = debug
    install_logging()
    signal.signal(signal.SIGTERM, _terminate)


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
@click.option("--peers", is_flag=True, help="List the paper's peer backbones and their timm names.")
@click.option("--count", is_flag=True, help="Count params and MACs on the built models (slower) instead of "
                                            "showing the published figures.")
@handle_errors
def models_cmd(as_json: bool, peers: bool, count: bool) -> None:
    """The LowFormer variants with params, MACs at 224, and published numbers."""
    from lowformer.models.catalog import model_table, peer_table

    rows = peer_table() if peers else model_table(computed=count)
    if as_json:
        return emit_json(rows)
    if peers:
        print_table("Peer backbones of the paper", ["peer", "timm name", "available"],
                    [(r["peer"], r["timm_name"] or "-", "yes" if r["available"] else "no") for r in rows])
        return
    source = "counted here" if count else "published"
    print_table(f"LowFormer variants (params and MACs {source})",
                ["name", "model", "params (M)", "MACs@224 (M)", "top-1", "A40 img/s", "TITAN RTX ms", "weights"],
                [(r["name"], r["display"], f"{r['params'] / 1e6:.2f}" if r["params"] else "-",
                  f"{r['macs'] / 1e6:.0f}" if r["macs"] else "-",
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
    from lowformer.models.catalog import model_info

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
@click.option("--to", "to", multiple=True, type=click.Choice(["torchscript", "onnx", "trt", "tensorrt", "pt2",
                                                               "openvino"]),
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
@click.option("--calib-data", type=click.Path(), help="INT8: calibration image folder.")
@click.option("--calib-size", default=512, show_default=True, type=click.IntRange(1, 100000))
@click.option("--calib-method", default="percentile", show_default=True,
              type=click.Choice(["entropy", "minmax", "percentile"]))
@click.option("--target", "int8_target", default="cpu", show_default=True,
              type=click.Choice(["cpu", "tensorrt", "openvino"]),
              help="INT8 flavour: cpu (u8 activations, x86 VNNI), tensorrt (symmetric s8) or openvino (for "
                   "OpenVINO's CPU plugin: symmetric s8 Q/DQ, or NNCF's; with --to openvino also as IR).")
@click.option("--quantizer", type=click.Choice(["qdq", "nncf"]),
              help="INT8 with --target openvino: qdq (our Q/DQ ONNX, also as IR) or nncf (IR only, needs --to "
                   "openvino) [default: qdq; nncf for an IR with 7-bit weights (--weight-bits), see README].")
@click.option("--weight-bits", default="auto", show_default=True, type=click.Choice(["auto", "7", "8"]),
              help="INT8 weights of the x86 targets (cpu, openvino Q/DQ, NNCF's overflow fix): auto = 7-bit when "
                   "this CPU has no VNNI/AMX (its u8 x s8 kernels saturate), else 8-bit; give 7 for an artifact "
                   "bound for such a CPU. --target tensorrt: 8-bit.")
@click.option("--exclude", multiple=True, help="INT8: keep modules matching this glob in float (e.g. 'stages.3.*.attn').")
@click.option("--auto-exclude", is_flag=True,
              help="INT8: keep blocks in float until the gate holds, choosing the fastest set found: blocks ranked "
                   "by accuracy harm per ms their float version costs (ONNX Runtime CPU profile; a stated proxy "
                   "for --target tensorrt/openvino); prints every candidate tried.")
@click.option("--gate-top1-drop", type=float, default=1.0, show_default=True, help="INT8 --auto-exclude gate (points).")
@click.option("--keep-f32", "keep_f32", multiple=True, metavar="BLOCK",
              help="Float OpenVINO IRs (model.xml, model_fp16.xml): keep these blocks (or module globs, e.g. "
                   "'stem', 'blocks.1.*') at f32 when the IR runs at --precision bf16/f16: fewer flips for some "
                   "speed (README) [default: none].")
@click.option("--min-batch", type=click.IntRange(1), help="TensorRT profile [default: the ONNX's fixed batch, else 1].")
@click.option("--opt-batch", type=click.IntRange(1), help="TensorRT profile [default: the fixed batch, else --min-batch].")
@click.option("--max-batch", type=click.IntRange(1), help="TensorRT profile [default: the fixed batch, else 32].")
@click.option("--workspace-mb", default=2048, show_default=True, type=click.IntRange(16))
@click.option("--lock-timeout", default=600.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to wait while another lowformer process writes into --out.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object to stdout (human output goes to stderr).")
@handle_errors
def export_cmd(model, to, fp16, int8, checkpoint, image_size, batch_size, dynamic_batch, opset, out, no_fuse,
               data, calib_data, calib_size, calib_method, int8_target, quantizer, weight_bits, exclude,
               auto_exclude, gate_top1_drop, keep_f32, min_batch, opt_batch, max_batch, workspace_mb, lock_timeout,
               as_json):
    """Fuse MODEL and export it (TorchScript, ONNX, FP16/INT8 ONNX, TensorRT), checking parity.

    \b
    Exit codes: 0 all artifacts written and passed parity; 1 error or failed parity;
    3 the ONNX is ready but the TensorRT engine must be built on a machine with TensorRT and a GPU.
    """
    from lowformer.export.pipeline import export_model

    to = tuple(dict.fromkeys("trt" if t == "tensorrt" else t for t in to))
    if batch_size and dynamic_batch:
        raise click.UsageError("--batch-size and --dynamic-batch exclude each other")
    calib = dict(calib_data=calib_data, calib_size=calib_size, method=calib_method, target=int8_target,
                 exclude=list(exclude), auto_exclude=auto_exclude, gate_top1_drop=gate_top1_drop,
                 quantizer=quantizer, weight_bits=weight_bits) if int8 else None
    with console.status(f"exporting {model}..."):
        result = export_model(model, to=to, fp16=fp16, int8=int8, checkpoint=checkpoint, image_size=image_size,
                              batch_size=batch_size, opset=opset, out=out, do_fuse=not no_fuse, data=data,
                              calib=calib, trt_build=dict(min_batch=min_batch, opt_batch=opt_batch,
                                                          max_batch=max_batch, workspace_mb=workspace_mb),
                              progress=RichProgress(), lock_timeout=lock_timeout, keep_f32=keep_f32 or None)
    if as_json:
        emit_json(result.to_dict())
    else:
        print_table(f"Exported to {result.out}", ["artifact", "format", "precision", "rel-L2", "cosine", "top-1 agree",
                                                  "parity"],
                    [(a.path, a.format, a.precision, *("-" if v is None else f.format(v) for v, f in (
                        (a.parity.rel_l2, "{:.2e}"), (a.parity.cosine, "{:.6f}"), (a.parity.top1_agreement, "{:.1%}"))),
                      "pass" if a.parity.passed else "FAIL")
                     for a in result.artifacts if a.parity is not None])
        for a in result.artifacts:
            if a.parity is not None and a.parity.failure:  # no metric says why: the reason, one line
                error_line(a.parity.failure)
        for a in result.artifacts:
            if a.format == "onnx" and a.int8.get("auto_exclude"):  # OpenVINO's Q/DQ IR repeats it
                print_auto_exclude(a.int8["auto_exclude"])
        for step in result.next_steps:
            console.print(f"[bold]next step:[/bold] {step}", highlight=False, soft_wrap=True)
    sys.exit(result.exit_code)


@main.command("build-engine")
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
@click.option("--json", "as_json", is_flag=True, help="Print the engine's manifest entry as JSON to stdout.")
@handle_errors
def build_engine_cmd(onnx_file: str, out: Optional[str], fp16: bool, int8: bool, min_batch: int, opt_batch: int,
                     max_batch: int, workspace_mb: int, timing_cache: Optional[str], lock_timeout: float,
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
        entry = build_engine(onnx_file, out, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                             workspace_mb=workspace_mb, timing_cache=timing_cache, fp16=fp16, int8=int8,
                             lock_timeout=lock_timeout)
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
@click.option("--checkpoint", type=click.Path(),
              help="Weights of --reference (omit: random init); alone: the manifest's model with these weights, "
                   "which must have the sha256 the manifest records.")
@click.option("--verify", "verify", default="cache", show_default=True, type=click.Choice(["cache", "full"]),
              help="cache: trust .verified.json for files whose size, mtime, ctime and inode are unchanged; "
                   "full: re-hash every artifact and the reference checkpoint.")
@click.option("--gate-top1-drop", type=float, help="Max top-1 drop in pt vs the reference [fp16 0.2, int8 1.0].")
@click.option("--gate-agreement", type=float, help="Min top-1 agreement with the reference, 0..1 [fp32 0.999, fp16 0.995].")
@click.option("--crop-ratio", type=float, help="Override the manifest's crop/resize ratio (e.g. 0.875).")
@click.option("--interpolation", type=click.Choice(["bicubic", "bilinear", "nearest"]), help="Override the resize filter.")
@click.option("--mean", help="Override normalization mean, e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Override normalization std, e.g. 0.229,0.224,0.225.")
@click.option("--skip-bad-images", is_flag=True, help="Skip (and list) unreadable images instead of failing.")
@click.option("--report", type=click.Path(), help="Write the full result (incl. flipped images) as JSON.")
@click.option("--threads", type=click.IntRange(1, 256), help="Inference threads (torch and ONNX Runtime).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda", "tensorrt"]),
              help="Where artifacts run (cuda/tensorrt: ONNX Runtime GPU providers, TensorRT engines).")
@click.option("--skip-missing", is_flag=True, help="Skip manifest entries whose file is missing (else an error).")
@click.option("--no-record", is_flag=True, help="Do not write the results into the artifacts' manifests.")
@click.option("--runtime", "runtimes", multiple=True, metavar="RUNTIME",
              help="auto (each format's own), onnxruntime or openvino (ONNX through OpenVINO); repeat for several.")
@click.option("--precision", "precisions", multiple=True, metavar="PRECISION",
              help="OpenVINO inference precision: f32 (default), bf16 (AMX/AVX-512-BF16 CPUs) or f16; repeat for several.")
@click.option("--explain", is_flag=True,
              help="Then compare every block's output with the reference's (SQNR, cosine, ...; CPU): where it diverges; "
                   "INT8: the blocks to --exclude (largest SQNR loss first, >= 90% of it).")
@click.option("--lock-timeout", default=600.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to wait while another lowformer process writes into a folder this records into.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON to stdout.")
@handle_errors
def validate_cmd(artifacts, data, labels, limit, batch_size, workers, reference, checkpoint, verify, gate_top1_drop,
                 gate_agreement, crop_ratio, interpolation, mean, std, skip_bad_images, report, threads, device,
                 skip_missing, no_record, runtimes, precisions, explain, lock_timeout, as_json) -> None:
    """ImageNet top-1/top-5 of every artifact against the PyTorch reference, on the same images.

    \b
    Exit code 0 only if every artifact passes its gate:
      fp32: top-1 agreement >= 99.9%;  fp16: drop <= 0.2 pt and agreement >= 99.5%;  int8: drop <= 1.0 pt;
      bf16 (an FP32 model run by OpenVINO with --precision bf16): as fp16.
    A 1000-class model on class folders that are not ImageNet wnids (labels in folder order,
    e.g. generated images): the gates are recorded as not applied, with the reason (a warning).
    The outcome is also recorded under "validation" in each artifact's manifest entry.
    """
    from lowformer.cli_options import parse_triplet
    from lowformer.validate import record_validation, validate

    mean, std = parse_triplet(mean, "--mean"), parse_triplet(std, "--std")
    plan = None
    if explain:  # its checks first: a refused artifact costs nothing and shows nothing
        from lowformer.explain import prepare_explain

        plan = prepare_explain(list(artifacts), data, labels=labels, limit=limit, workers=workers, threads=threads,
                               skip_missing=skip_missing, reference=reference, checkpoint=checkpoint,
                               runtimes=runtimes, precisions=precisions, skip_bad_images=skip_bad_images,
                               crop_ratio=crop_ratio,
                               interpolation=interpolation, mean=mean, std=std)
    result = validate(list(artifacts), data, labels=labels, limit=limit, batch_size=batch_size, workers=workers,
                      reference=reference, checkpoint=checkpoint, gate_top1_drop=gate_top1_drop,
                      gate_agreement=gate_agreement, crop_ratio=crop_ratio, interpolation=interpolation,
                      mean=mean, std=std, skip_bad_images=skip_bad_images, report=None if explain else report,
                      threads=threads,
                      device=device, skip_missing=skip_missing, record=False, runtimes=runtimes,
                      precisions=precisions, progress=RichProgress(), verify=verify)
    for w in result.warnings:
        console.print(Text.assemble(("warning:", "yellow"), " ", w), highlight=False, soft_wrap=True)
    if not as_json:
        d = result.data
        print_table(f"{d['images']} images, labels: {d['label_source']}", result.COLUMNS, result.rows())
        for a in result.artifacts:
            for f in a.failures:
                error_line(f"{a.name}: {f}")
    if not no_record:  # after the table: a folder we cannot write to still shows what was measured
        record_validation(result, lock_timeout)
    out = result.to_dict()
    if plan is not None:
        out["explain"] = _explain_and_show(plan, not no_record, as_json, lock_timeout)
        if report:
            from lowformer.core.files import write_json

            write_json(report, out)
    if as_json:
        emit_json(out)
    if not result.passed:
        sys.exit(1)


def _explain_and_show(plan, record: bool, as_json: bool, lock_timeout: float = 600.0) -> dict:
    """`validate --explain`: the block-by-block pass, a table and the findings per artifact."""
    ex = plan.run(progress=RichProgress(), record=record, lock_timeout=lock_timeout)
    for w in ex.warnings:
        console.print(Text.assemble(("warning:", "yellow"), " ", w), highlight=False, soft_wrap=True)
    if not as_json:
        for a in ex.artifacts:
            print_table(f"{a.name}: block outputs vs the reference, {a.images} images "
                        f"({a.precision}, SQNR floor {a.tolerance.get('sqnr_db'):g} dB)", a.COLUMNS, a.rows())
            for line in a.findings():
                console.print(Text.assemble((f"{a.name}:", "bold"), " ", line), highlight=False, soft_wrap=True)
    return ex.to_dict()


@main.command("train")
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
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON to stdout.")
@handle_errors
def train_cmd(model, data, val_data, epochs, batch_size, lr, image_sizes, eval_size, out, resume, device, amp,
              workers, accum_steps, num_classes, max_steps, seed, model_kwargs, mixup, cutmix, smoothing, randaug,
              reprob, drop_path, weight_decay, warmup_epochs, ema_decay, clip_grad, overrides, eval_every, threads,
              as_json):
    """Train MODEL (b0 ... e3, timm:<name>) with the paper's recipe; resumable, and DDP under torchrun.

    \b
    Writes to the run folder: last.pt (every epoch, atomic; --resume continues it exactly),
    best.pt (EMA weights, official LowFormer keys: `lowformer export b1 --checkpoint best.pt`),
    metrics.jsonl, config.json, summary.json.
    \b
    Several processes: torchrun --nproc_per_node N -m lowformer train MODEL --data ...
    (lr and total batch scale with N; NCCL on GPUs, gloo on CPUs).
    """
    from lowformer.cli_options import parse_json_object, parse_overrides, parse_sizes
    from lowformer.training import TrainConfig, train

    recipe = parse_overrides(overrides)
    named = dict(mixup_alpha=mixup, cutmix_alpha=cutmix, smoothing=smoothing, reprob=reprob, drop_path=drop_path,
                 weight_decay=weight_decay, warmup_epochs=warmup_epochs, ema_decay=ema_decay, clip_grad=clip_grad)
    recipe.update({k: v for k, v in named.items() if v is not None})
    if randaug is not None:
        recipe["randaug"] = None if randaug.lower() in ("none", "off", "") else randaug
    cfg = TrainConfig(model=model, data=data, val_data=val_data, out=out, epochs=epochs, batch_size=batch_size, lr=lr,
                      image_sizes=parse_sizes(image_sizes), eval_size=eval_size, device=device, amp=amp,
                      workers=workers, accum_steps=accum_steps, num_classes=num_classes, max_steps=max_steps,
                      seed=seed, model_kwargs=parse_json_object(model_kwargs, "--model-kwargs"), recipe=recipe,
                      eval_every=eval_every, threads=threads)
    summary = train(cfg, resume=resume, progress=RichProgress())
    if summary["rank"] != 0:
        return
    if as_json:
        return emit_json(summary)
    final = summary["final"]
    result = f"top-1 {final['top1']:.2f}% on {final['n']} images" if final else "no --val-data"
    console.print(f"[bold]{summary['model']}[/bold]: {summary['epochs']} epochs, {summary['steps']} steps, "
                  f"{summary['seconds']:.0f} s; {result}; best.pt: {summary['best']['path']}", highlight=False,
                  soft_wrap=True)


@main.command("profile")
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
@click.option("--runtime", "runtimes", multiple=True, metavar="RUNTIME",
              help="auto (each format's own), onnxruntime or openvino (ONNX through OpenVINO); repeat for several.")
@click.option("--precision", "precisions", multiple=True, metavar="PRECISION",
              help="OpenVINO inference precision: f32 (default), bf16 (AMX/AVX-512-BF16 CPUs) or f16; repeat for several.")
@click.option("--no-record", is_flag=True, help="Do not write the per-block times into the artifacts' manifests.")
@handle_errors
def profile_cmd(targets, batch_size, iterations, warmup, device, group_by, top, json_path, plot_path, threads,
                image_size, checkpoint, trt_profile, trt_layers, runtimes, precisions, no_record):
    """Per-layer latency of ARTIFACT_OR_MANIFEST... (or MODEL names, eager), mapped to LowFormer blocks.

    \b
    Rows name PyTorch module paths (stages.2.3.attn...), grouped by block (stages.S.B), stage
    (stem, stages.S, head) and kind (stem, fused MBConv, MBConv, attention, MLP, head, downsample).
    Latency comes from a separate, un-instrumented run; coverage is the share of profiled time
    attributed to named layers.
    """
    from lowformer.profiling import profile, report_from_trtexec
    from lowformer.profiling.api import record_profiles
    from lowformer.profiling.plot import plot_reports
    from lowformer.cli_render import print_reports

    if not targets and not trt_profile:
        raise click.UsageError("give at least one artifact, manifest, folder or model (or --trt-profile)")
    if trt_layers and not trt_profile:
        raise click.UsageError("--trt-layers goes with --trt-profile")
    reports = profile(list(targets), batch_size=batch_size, iterations=iterations, warmup=warmup, device=device,
                      threads=threads, image_size=image_size, checkpoint=checkpoint, runtimes=runtimes,
                      precisions=precisions, progress=RichProgress(), record=False) if targets else []
    measured = list(reports)  # the artifacts' own reports (not the trtexec one): what --no-record skips
    if trt_profile:
        reports.append(report_from_trtexec(trt_profile, trt_layers, label=f"TensorRT ({trt_profile})"))
    if json_path:
        doc = {"schema": 1, "reports": [r.to_dict() for r in reports]}
        if json_path == "-":
            emit_json(doc)
        else:
            from lowformer.core.files import write_json

            write_json(json_path, doc)
    print_reports(console, reports, group_by, top)
    if plot_path:
        plot_reports(reports, plot_path, group_by if group_by in ("stage", "kind") else "stage")
        console.print(f"chart written to {plot_path}", highlight=False)
    if not no_record:  # after the table: a folder we cannot write to still shows what was measured
        record_profiles(measured)


@main.command("bench")
@click.argument("targets", nargs=-1, required=True)
@click.option("--batch-size", type=click.IntRange(1, 65536),
              help="Images per call [default: 200 (the paper's) on cuda, 16 on cpu].")
@click.option("--iterations", type=click.IntRange(1), help="Timed calls per target [default: 400 on cuda].")
@click.option("--duration", type=click.FloatRange(0.1), help="Seconds of timed calls per target, instead of "
                                                             "--iterations [default on cpu: 5].")
@click.option("--warmup", type=click.IntRange(0), help="Untimed calls first [default: 20 on cuda, 3 on cpu].")
@click.option("--latency", is_flag=True, help="Latency mode: ms per batch-1 call (ignores --batch-size).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Processes timing at once (spawned, one runner each); reports the mean of their medians.")
@click.option("--threads", type=click.IntRange(1), help="Threads per process [default: runtime's; cores/jobs with --jobs].")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(32, 2048), help="For MODEL arguments.")
@click.option("--optit", is_flag=True, help="Benchmark MODELs as BN-fused TorchScript + optimize_for_inference (the paper's --optit).")
@click.option("--checkpoint", type=click.Path(), help="Weights for MODEL arguments (default: random init).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document to stdout (schema in lowformer/bench/run.py).")
@click.option("--runtime", "runtimes", multiple=True, metavar="RUNTIME",
              help="auto (each format's own), onnxruntime or openvino (ONNX through OpenVINO); repeat for several.")
@click.option("--precision", "precisions", multiple=True, metavar="PRECISION",
              help="OpenVINO inference precision: f32 (default), bf16 (AMX/AVX-512-BF16 CPUs) or f16; repeat for several.")
@click.option("--no-record", is_flag=True, help="Do not write the timings into the artifacts' manifests.")
@handle_errors
def bench_cmd(targets, batch_size, iterations, duration, warmup, latency, jobs, threads, device, image_size, optit,
              checkpoint, as_json, runtimes, precisions, no_record):
    """Throughput (images/s) or latency (ms) of MODEL_OR_ARTIFACT... (b1, timm:resnet50, model.onnx, folders).

    \b
    `lowformer bench b1 --latency --optit` reproduces the paper's latency command;
    `--jobs 4` times four processes at once (the paper's multi-process latency).
    """
    from lowformer.bench import bench
    from lowformer.bench.run import record_latencies

    if iterations and duration:
        raise click.UsageError("--iterations and --duration exclude each other")
    report = bench(list(targets), batch_size=batch_size, iterations=iterations, warmup=warmup, latency=latency,
                   jobs=jobs, threads=threads, device=device, image_size=image_size, optit=optit,
                   checkpoint=checkpoint, progress=RichProgress(), duration=duration, runtimes=runtimes,
                   precisions=precisions, record=False)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_bench(report)
    if not no_record:  # after the table: a folder we cannot write to still shows what was measured
        record_latencies(report)


def _print_bench(report) -> None:
    m = report.machine
    print_table(f"{report.mode} on {m['cpu']} ({m.get('isa', '?')}, {m['cores']} cores), batch {report.batch_size}, "
                f"{report.jobs} job(s)",
                ["target", "backend", "precision", "median ms", "p10 ms", "p90 ms", "min ms", "images/s", "GFLOP/s"],
                [(r.target, r.backend, r.precision, f"{r.median_ms:.3f}", f"{r.p10_ms:.3f}", f"{r.p90_ms:.3f}",
                  f"{r.min_ms:.3f}", f"{r.images_per_s:.1f}", f"{r.gflops:.1f}" if r.gflops else "-")
                 for r in report.results])
    for r in report.results:
        for w in r.warnings:
            console.print(Text.assemble(("warning:", "yellow"), f" {r.target}: {w}"), highlight=False, soft_wrap=True)


@main.command("report")
@click.argument("folders", nargs=-1, required=True, type=click.Path())
@click.option("--out", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="The HTML file to write (self-contained: opens from disk, no network).")
@click.option("--json", "as_json", is_flag=True, help="Print what the page holds as JSON to stdout.")
@handle_errors
def report_cmd(folders, out, as_json):
    """One self-contained report.html of ARTIFACT_DIR... from their manifests.

    \b
    Artifact table (size, top-1, delta with its interval, agreement, McNemar p, logit cosine,
    latency per runtime and batch), per-block divergence (validate --explain), per-block latency
    (profile), flipped-image gallery (validate), and the machine. Shows only what was recorded.
    """
    from lowformer.report import collect, write_html_report

    data = collect(list(folders))
    path = write_html_report(list(folders), out, data=data)
    if as_json:
        return emit_json({"report": str(path), **data.summary()})
    console.print(f"report: {path}", highlight=False, soft_wrap=True)


@main.command("demo")
@click.option("--checkpoint", type=click.Path(), help="LowFormer-B0 checkpoint (else random weights, said plainly).")
@click.option("--data", type=click.Path(), help="Real images (ImageFolder) for parity and calibration.")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False))
@click.option("--limit", default=200, show_default=True, type=click.IntRange(1), help="Validation images at most.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON to stdout.")
@handle_errors
def demo_cmd(checkpoint: Optional[str], data: Optional[str], out: str, limit: int, as_json: bool) -> None:
    """The whole chain on built-in defaults: export, INT8, parity, profiles, benchmark, report."""
    from lowformer.demo import run_demo

    summary = run_demo(out, checkpoint, data, limit=limit, progress=RichProgress())
    if as_json:
        emit_json(summary)
        sys.exit(0 if summary["passed"] else 1)
    print_table("lowformer demo", summary["columns"], summary["rows"])
    for w in summary.get("warnings") or []:  # under the table whose latencies they qualify
        console.print(Text.assemble(("warning:", "yellow"), " ", w), highlight=False, soft_wrap=True)
    for m in summary["models"]:
        if m["next_step"]:
            console.print(f"[bold]TensorRT ({m['name']}):[/bold] {m['next_step']}", highlight=False, soft_wrap=True)
    console.print(f"report: {summary['report']} and {summary['report_html']}", highlight=False, soft_wrap=True)
    if not summary["passed"]:
        sys.exit(1)


def print_auto_exclude(auto) -> None:
    """The candidates --auto-exclude evaluated (one row each) and its one-line conclusion."""
    if auto.get("tried"):
        def ms(v) -> str:
            return "-" if v is None else f"{v:.3g}"
        print_table(f"auto-exclude: candidates tried ({auto.get('search', 'harm-order')}; estimates: "
                    f"{auto.get('latency_source') or 'not profiled'})",
                    ["phase", "kept in float", "drop (pt)", "agreement", "cosine", "est. ms", "gate"],
                    [(t["phase"], ", ".join(t["kept_float"]) or "(all INT8)", f"{t['drop']:.2f}",
                      f"{t['agreement']:.1%}", f"{t['cosine']:.5f}", ms(t.get("estimated_ms")),
                      "pass" if t["passed"] else "fail") for t in auto["tried"]])
    verdict = "[green]holds[/green]" if auto["passed"] else "[red]does not hold[/red]"
    console.print(f"auto-exclude ({verdict}): {auto.get('conclusion') or ', '.join(auto['kept_float'])}",
                  highlight=False, soft_wrap=True)


@main.group("calibrate")
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object to stdout.")
@handle_errors
def calibrate_sensitivity_cmd(model, calib_data, eval_data, checkpoint, image_size, calib_size, eval_size, target,
                              method, method_alias, mode, exclude, auto_exclude, gate_top1_drop, out, as_json):
    """Per-block INT8 sensitivity of MODEL (a model name or an export folder) vs FP32 on held-out images.

    Calibrates once (cached), then re-quantizes one block at a time and reports top-1 agreement,
    logit cosine and the top-1 drop (points) of each variant. With --auto-exclude it also profiles
    the FP32 and INT8 models per block on ONNX Runtime's CPU provider and searches for the fastest
    set of float blocks that meets --gate-top1-drop (table of candidates tried, estimated and
    measured latency; --json carries all of it under auto_exclude).
    """
    from lowformer.calibrate.sensitivity import SensitivityConfig, sensitivity_report
    from lowformer.data.preprocess import Preprocessing
    from lowformer.export.pipeline import fp32_onnx

    method = method_alias or method
    src, manifest = fp32_onnx(model, checkpoint, image_size, out)
    cfg = SensitivityConfig(calib_data, eval_data, calib_size, eval_size, target, method, mode, tuple(exclude),
                            auto_exclude, gate_top1_drop)
    report = sensitivity_report(src, Preprocessing.from_dict(manifest.preprocessing),
                                str(manifest.checkpoint.get("sha256") or "unknown"), cfg,
                                model_name=manifest.model_name, progress=RichProgress())
    if as_json:
        return emit_json(report)
    labels = report["labels"]
    print_table(f"INT8 sensitivity ({report['mode']}, {report['target']}, {report['method']}) of {report['model']}",
                ["block", "nodes", "agreement", "cosine", "top-1" if labels else "-", "drop (pt)"],
                [(r["block"], r["nodes"], f"{r['agreement']:.1%}", f"{r['cosine']:.5f}",
                  f"{r['top1']:.1%}" if labels else "-", f"{r['drop']:.2f}") for r in report["blocks"]])
    if labels:
        console.print(f"FP32 top-1 on the held-out split: {report['fp32_top1']:.1%} ({report['eval']['count']} images)")
    measure = "lowest logit cosine first" if report["mode"] == "quantize-one" else "highest logit cosine first"
    console.print(f"most harmful ({measure}, then agreement): {', '.join(report['most_harmful'])}", highlight=False)
    console.print(f"FP32 ONNX: {report['onnx']}; calibration cache: {report['cache']['path']}", highlight=False)
    auto = report["auto_exclude"]
    if auto:
        print_auto_exclude(auto)
