"""`lowformer validate` (and `--explain`): ImageNet parity of every artifact against the reference."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import click

from lowformer.commands.errors import handle_errors
from lowformer.commands.options import RunOptions, json_option, options_into, parse_triplet, runtime_options
from lowformer.commands.progress import RichProgress
from lowformer.commands.render import emit_json, print_explain, print_validation, warning_line
from lowformer.core.progress import no_progress


@dataclass(frozen=True)
class ImageOptions:
    """The images `validate` runs on and their preprocessing (their click parameter names)."""

    labels: Optional[str]
    limit: Optional[int]
    batch_size: int
    workers: Optional[int]
    crop_ratio: Optional[float]
    interpolation: Optional[str]
    mean: Optional[str]
    std: Optional[str]
    skip_bad_images: bool

    def fields(self) -> Dict[str, Any]:
        """Keywords of lowformer.evaluate.config.DataConfig (--mean / --std parsed)."""
        return dict(labels=self.labels, limit=self.limit, batch_size=self.batch_size, workers=self.workers,
                    skip_bad_images=self.skip_bad_images, crop_ratio=self.crop_ratio,
                    interpolation=self.interpolation, mean=parse_triplet(self.mean, "--mean"),
                    std=parse_triplet(self.std, "--std"))


@dataclass(frozen=True)
class ReferenceOptions:
    """What the artifacts are compared with (`reference`, `checkpoint`, `verify`) and judged by (the
    gates `gate_top1_drop`, `gate_agreement`)."""

    reference: Optional[str]
    checkpoint: Optional[str]
    verify: str
    gate_top1_drop: Optional[float]
    gate_agreement: Optional[float]


@dataclass(frozen=True)
class RecordOptions:
    """What `validate` writes: `--report`, the manifests (unless `no_record`; waiting at most
    `lock_timeout` seconds for another writer), and JSON to stdout (`as_json`)."""

    report: Optional[str]
    no_record: bool
    lock_timeout: float
    as_json: bool


@dataclass(frozen=True)
class SplitOptions:
    """What the pass does and how the run is split: `explain` (block by block too), `shard` (K/N)
    with its `records` file, or `merge` of records files."""

    explain: bool
    shard: Optional[str]
    records: Optional[str]
    merge: bool


@click.command("validate")
@click.argument("artifacts", nargs=-1, required=True, metavar="ARTIFACT_OR_MANIFEST...")
@click.option("--data", type=click.Path(), help="val/<wnid>/*.JPEG folder, or a flat folder with --labels.")
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
@runtime_options
@click.option("--explain", is_flag=True,
              help="Then compare every block's output with the reference's (SQNR, cosine, ...; CPU): where it diverges; "
                   "INT8: the blocks to --exclude (largest SQNR loss first, >= 90% of it).")
@click.option("--shard", "shard", metavar="K/N",
              help="Score only shard K of N (a class-stratified share of whole batches) and write its per-image "
                   "records to --records; merge every shard's with --merge. Under torchrun: the ranks' shards.")
@click.option("--records", "records", type=click.Path(), help="With --shard: the records file to write.")
@click.option("--merge", "merge", is_flag=True,
              help="The arguments are the records files of every shard of one run: the report of one process "
                   "over all images, checked, gated and recorded as validate would.")
@click.option("--lock-timeout", default=600.0, show_default=True, type=click.FloatRange(0),
              help="Seconds to wait while another lowformer process writes into a folder this records into.")
@json_option()
@handle_errors
@options_into("images", ImageOptions)
@options_into("ref", ReferenceOptions)
@options_into("run", RunOptions)
@options_into("split", SplitOptions)
@options_into("output", RecordOptions)
def validate_cmd(artifacts: Tuple[str, ...], data: Optional[str], images: ImageOptions, ref: ReferenceOptions,
                 run: RunOptions, skip_missing: bool, split: SplitOptions, output: RecordOptions) -> None:
    """ImageNet top-1/top-5 of every artifact against the PyTorch reference, on the same images.

    \b
    Exit code 0 only if every artifact passes its gate:
      fp32: top-1 agreement >= 99.9%;  fp16: drop <= 0.2 pt and agreement >= 99.5%;  int8: drop <= 1.0 pt;
      bf16 (an FP32 model run by OpenVINO with --precision bf16): as fp16.
    A 1000-class model on class folders that are not ImageNet wnids (labels in folder order,
    e.g. generated images): the gates are recorded as not applied, with the reason (a warning).
    The outcome is also recorded under "validation" in each artifact's manifest entry.

    \b
    Beyond one process (docs/commands/validate.md):
      --shard K/N --records FILE   score shard K of N (any launcher: Slurm array, Kubernetes, Ray)
      --merge FILE...              the whole report from every shard's records
      torchrun --nproc-per-node N -m lowformer validate ...   ranks split the images, rank 0 reports
    """
    from lowformer.validate import ValidateConfig, validate

    explain = split.explain
    distributed = _check_split(split, data, output)
    if split.merge:
        return _merge(artifacts, output)

    # what validate and prepare_explain both take: the same images, reference and runtimes
    shared = dict(**images.fields(), reference=ref.reference, checkpoint=ref.checkpoint, threads=run.threads,
                  runtimes=run.runtimes, precisions=run.precisions, skip_missing=skip_missing)
    plan = None
    if explain:  # its checks first: a refused artifact costs nothing and shows nothing
        from lowformer.explain import prepare_explain

        plan = prepare_explain(list(artifacts), data, **shared)
    # one pass over the images: validate's scores and, with --explain, the block-by-block comparison
    config = ValidateConfig.build(**shared, gate_top1_drop=ref.gate_top1_drop, gate_agreement=ref.gate_agreement,
                                  report=None if explain else output.report, device=run.device, record=False,
                                  verify=ref.verify, distributed=distributed)
    if split.shard:
        return _shard(artifacts, data, split, config, output.as_json, plan)
    writer = not distributed or _rank() == 0  # under torchrun every rank holds the result; rank 0 speaks
    result = validate(list(artifacts), data, config.replace(report=config.report if writer else None),
                      progress=RichProgress() if writer else no_progress, explain_plan=plan)
    if not writer:
        # rank 0 speaks and carries the verdict (its exit code is torchrun's): a rank that exited 1
        # here would have torchrun stop rank 0 (SIGTERM) while it writes the report and the manifests.
        # Once rank 0 has ended, torchrun may stop this rank on its way out: nothing left to say then.
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return
    _report_result(result, output, plan)


def _report_result(result, output: RecordOptions, plan=None, write_report: bool = False) -> None:
    """Show, record and (with --json) print a result; exit 1 unless every artifact passed."""
    from lowformer.validate import record_validation

    lock_timeout, as_json = output.lock_timeout, output.as_json
    _show_validation(result, as_json)
    if not output.no_record:  # after the table: a folder we cannot write to still shows what was measured
        record_validation(result, lock_timeout)
    out = result.to_dict()
    if plan is not None or result.explanation is not None or result.explain_error is not None:
        _show_explanation(result.explained(), not output.no_record, as_json, lock_timeout)  # raises if it failed
        _write_report(output.report, out)
    elif write_report:
        _write_report(output.report, out)
    if as_json:
        emit_json(out)
    if not result.passed:
        sys.exit(1)


def _show_validation(result, as_json: bool) -> None:
    """The warnings, then (without --json) the table and one error line per failed gate."""
    for w in result.warnings:
        warning_line(w)
    if not as_json:
        print_validation(result)


def _show_explanation(ex, record: bool, as_json: bool, lock_timeout: float = 600.0) -> None:
    """`validate --explain`: record the explanation, then its warnings, a table and the findings."""
    if record:
        from lowformer.explain import record_explanation

        record_explanation(ex, lock_timeout)
    for w in ex.warnings:
        warning_line(w)
    if not as_json:
        print_explain(ex)


def _write_report(report: Optional[str], out: Dict[str, Any]) -> None:
    """--report with --explain: the validation and the explanation in one JSON file."""
    if report:
        from lowformer.core.files import write_json

        write_json(report, out)


def _rank() -> int:
    from lowformer.evaluate.shards import Shard

    return (Shard.from_torchrun() or Shard()).index - 1


def _check_split(split: SplitOptions, data: Optional[str], output: RecordOptions) -> bool:
    """Usage errors of --shard/--records/--merge; whether this process is a rank of torchrun."""
    from lowformer.evaluate.shards import Shard

    distributed = Shard.from_torchrun() is not None
    if split.merge:
        if split.shard or split.records or split.explain or data or distributed:
            raise click.UsageError("--merge takes only records files (and --report, --json, --no-record, "
                                   "--lock-timeout): the run's options are in them")
        return False
    if data is None:
        raise click.UsageError("Missing option '--data'")
    if bool(split.shard) != bool(split.records):
        raise click.UsageError("--shard K/N and --records FILE go together")
    if split.shard and distributed:
        raise click.UsageError("under torchrun the ranks are the shards: leave out --shard and --records")
    if split.shard and output.report:
        raise click.UsageError("a shard writes only its --records (no --report, nothing recorded): "
                               "merge every shard with --merge")
    return distributed


def _shard(artifacts: Tuple[str, ...], data: str, split: SplitOptions, config, as_json: bool, plan=None) -> None:
    """`--shard K/N --records FILE`: score the shard, write its records, say so in one line."""
    from lowformer.evaluate.shards import Shard
    from lowformer.validate import validate_shard

    shard = Shard.parse(split.shard or "")
    records = validate_shard(list(artifacts), data, shard, config, progress=RichProgress(), explain_plan=plan)
    records.write(split.records)
    for w in records.warnings:
        warning_line(w)
    stopped = [f"{a['score']['name']}: {e}" for a, e in zip(records.run["artifacts"], records.errors) if e]
    stopped += [f"the explanation: {e['error']}" for e in records.explain if e["error"]]
    for s in stopped:
        warning_line(f"stopped running {s}")
    summary = {"shard": str(shard), "images": len(records.positions), "bad_images": len(records.bad_images),
               "artifacts": len(records.artifacts), "seconds": round(records.seconds, 2), "records": split.records}
    if as_json:
        emit_json(summary)
    else:
        print(f"shard {shard}: {len(records.positions)} images scored by the reference and "
              f"{len(records.artifacts)} artifact(s) in {records.seconds:.1f} s; records: {split.records} "
              f"(merge every shard's: lowformer validate --merge FILE...)")
    if stopped:
        sys.exit(1)


def _merge(files: Tuple[str, ...], output: RecordOptions) -> None:
    """`--merge FILE...`: the whole run from its shards' records."""
    from lowformer.explain import explanation_from_records
    from lowformer.validate import ValidateConfig, merge_validation

    # the report after the explanation's check, as validate --explain: no report without it
    result = merge_validation(list(files), ValidateConfig.build(record=False), explain_from=explanation_from_records)
    _report_result(result, output, write_report=True)
