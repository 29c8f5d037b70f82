"""ImageNet accuracy parity: every artifact against the PyTorch reference, on the same decoded batches.

One pass over the data: each image is decoded and preprocessed once (DataLoader workers), then the
reference and every artifact run on that batch. Per artifact: top-1/top-5, top-1 delta against the
reference, top-1 agreement, logit cosine and max-abs difference, and the images whose prediction
flipped. Precision-specific gates decide pass/fail; the caller (the CLI) turns that into an exit code.

The pass itself (images, decoding, the reference, the tallies) is lowformer.evaluate's, shared with
`explain`: `validate(..., explain_plan=)` runs both on one decode. Here: gates, scores, the result
and its recording.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from lowformer import artifacts as _artifacts
from lowformer.artifacts import ArtifactEntry, Manifest, ValidationRecord
from lowformer.compare import drop_decision, finite_or_none, mcnemar_exact, paired_bootstrap_delta
from lowformer.core.config import Config
from lowformer.core.progress import Progress, no_progress
from lowformer.core.errors import LowformerError, first_line
from lowformer.core.files import PathLike, write_json
from lowformer.evaluate import Deferred, Images, run_pass, select_images
from lowformer.engines.config import RunConfig
from lowformer.evaluate.config import DataConfig, ReferenceConfig
from lowformer.evaluate.data import calibration_images, default_workers  # noqa: F401 (re-exported)
from lowformer.evaluate.items import Item, folder_of as _folder_of, unique_names as _unique_names  # noqa: F401
from lowformer.evaluate.reference import reference_model, resolve_reference  # noqa: F401 (re-exported)
from lowformer.evaluate.scoring import Scorer
from lowformer.evaluate.records import RunRecords, image_list_checksum
from lowformer.evaluate.shards import Shard, shard_positions
from lowformer.evaluate.tally import Tally
from lowformer.verdict import gates_not_applied

# (pt drop of top-1 allowed, minimum top-1 agreement); None = not gated.
DEFAULT_GATES: Dict[str, Tuple[Optional[float], Optional[float]]] = {
    "fp32": (None, 0.999),
    "fp16": (0.2, 0.995),
    "int8": (1.0, None),
    "bf16": (0.2, 0.995),  # an FP32 model run by OpenVINO in bfloat16 (AMX): gated like FP16
}
MAX_FLIPS_IN_MANIFEST = 50
MAX_BAD_NAMED = 20  # --skip-bad-images: the warning names this many skipped files (--report has them all)

log = logging.getLogger(__name__)


@dataclass
class Gate:
    max_top1_drop: Optional[float] = None  # percentage points
    min_agreement: Optional[float] = None  # fraction of images

    @classmethod
    def for_precision(cls, precision: str, max_top1_drop: Optional[float] = None,
                      min_agreement: Optional[float] = None) -> "Gate":
        drop, agree = DEFAULT_GATES.get(precision, (None, None))
        return cls(drop if max_top1_drop is None else max_top1_drop,
                   agree if min_agreement is None else min_agreement)

    def failures(self, top1_delta: float, agreement: float) -> List[str]:
        out = []
        if self.max_top1_drop is not None and -top1_delta > self.max_top1_drop + 1e-9:
            out.append(f"top-1 dropped {-top1_delta:.2f} pt > {self.max_top1_drop:g} pt")
        if self.min_agreement is not None and agreement < self.min_agreement - 1e-12:
            out.append(f"top-1 agreement {agreement * 100:.2f}% < {self.min_agreement * 100:g}%")
        return out


@dataclass
class ModelScore:
    """Accuracy of one model; the parity fields are None for the reference itself."""

    name: str
    backend: str
    precision: str
    path: Optional[str]
    images: int = 0
    top1: float = 0.0  # percent
    top5: float = 0.0
    top1_delta: Optional[float] = None  # pt, artifact minus reference
    agreement: Optional[float] = None  # fraction of images with the reference's top-1 class
    cosine: Optional[float] = None  # mean per-image logit cosine
    max_abs: Optional[float] = None
    rel_l2: Optional[float] = None
    flipped: List[Dict[str, Any]] = field(default_factory=list)
    gate: Optional[Dict[str, Optional[float]]] = None
    failures: List[str] = field(default_factory=list)
    error: Optional[str] = None
    passed: Optional[bool] = None
    top1_delta_ci: Optional[List[float]] = None  # paired bootstrap 95% interval of top1_delta (pt)
    mcnemar_p: Optional[float] = None  # exact McNemar test on the images only one of the two got right
    decision: Optional[str] = None  # whether the images suffice to decide the drop gate
    runtime: Optional[str] = None  # set when not the format's own (OpenVINO running an ONNX)
    inference_precision: Optional[str] = None  # OpenVINO's INFERENCE_PRECISION_HINT (f32 | bf16 | f16)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class ValidationResult:
    data: Dict[str, Any]
    preprocessing: Dict[str, Any]
    reference: ModelScore
    artifacts: List[ModelScore]
    warnings: List[str]
    seconds: float
    date: str
    items: List[Item] = field(default_factory=list, repr=False, compare=False)
    # validate(..., explain_plan=): the ExplainResult of the same pass, or the error that stopped it
    explanation: Any = field(default=None, repr=False, compare=False)
    explain_error: Optional[Exception] = field(default=None, repr=False, compare=False)
    # a distilled INT8 artifact against its post-training model scored in the same pass (`qat_gains`)
    distillation: List[Dict[str, Any]] = field(default_factory=list)
    machine: Optional[Dict[str, Any]] = None  # the CPU the images ran on (that of the first shard); None: this one

    def explained(self) -> Any:
        """The ExplainResult of `validate(..., explain_plan=)` (None without a plan); raises, now, the
        error that stopped the explanation (the validation itself is complete)."""
        if self.explain_error is not None:
            raise self.explain_error
        return self.explanation

    @property
    def passed(self) -> bool:
        return all(a.passed is not False for a in self.artifacts)  # None: gates not applied (not failed)

    def to_dict(self) -> Dict[str, Any]:
        return {"passed": self.passed, "date": self.date, "seconds": round(self.seconds, 2),
                "images_per_second": round(self.data["images"] / self.seconds, 2) if self.seconds else None,
                "data": self.data, "preprocessing": self.preprocessing,
                "reference": self.reference.to_dict(), "artifacts": [a.to_dict() for a in self.artifacts],
                "warnings": self.warnings, "machine": self.machine or _machine(),
                **({"distillation": self.distillation} if self.distillation else {}),
                **({"explain": self.explanation.to_dict()} if self.explanation is not None else {})}

    def rows(self) -> List[List[str]]:
        """The end-of-run table (model, top-1, top-5, delta, agreement, cosine, max|diff|, flips, gate)."""
        def pct(v):
            return f"{v:.2f}" if v is not None else "-"

        r = self.reference
        # labels in folder order (gates not applied): no accuracy to show, n/a rather than 0.00
        acc = pct if not any((a.gate or {}).get("applied") is False for a in self.artifacts) else (lambda v: "n/a")
        out = [[f"{r.name} (reference)", acc(r.top1), acc(r.top5), "-", "-", "-", "-", "-", "-", "-", "-"]]
        for a in self.artifacts:
            verdict = "error" if a.error else ("pass" if a.passed else "not applied" if a.passed is None else "FAIL")
            ci = f"[{a.top1_delta_ci[0]:+.2f}, {a.top1_delta_ci[1]:+.2f}]" if a.top1_delta_ci else "-"
            out.append([a.name, acc(a.top1), acc(a.top5),
                        f"{a.top1_delta:+.2f}" if a.top1_delta is not None and acc is pct else acc(None),
                        ci if acc is pct else "n/a",
                        f"{a.mcnemar_p:.3g}" if a.mcnemar_p is not None and acc is pct else acc(None),
                        pct(a.agreement * 100 if a.agreement is not None else None),
                        f"{a.cosine:.6f}" if a.cosine is not None else "-",
                        f"{a.max_abs:.3g}" if a.max_abs is not None else "-",
                        str(len(a.flipped)), verdict])
        return out

    COLUMNS = ["model", "top-1 %", "top-5 %", "Δ top-1 pt", "95% CI", "McNemar p", "agree %", "cosine", "max|Δ|",
               "flips", "gate"]


def near_chance(top1: float, num_classes: int, n: int) -> bool:
    """Top-1 (percent) no better than guessing: chance + 3 standard errors + 1 pt."""
    if n < 20 or num_classes < 2:
        return False
    p = 1.0 / num_classes
    return top1 <= 100.0 * (p + 3.0 * (p * (1 - p) / n) ** 0.5) + 1.0


def _check_input_size(runner, crop: int, name: str) -> None:
    shape = list(runner.input_spec.shape)
    if len(shape) != 4:
        dims = "x".join(str(d) if isinstance(d, int) else "N" for d in shape)
        raise LowformerError(f"{name} takes inputs of shape {dims}, not images (Nx3xHxW): validate runs image "
                             "classifiers")
    h, w = shape[-2:]
    if (isinstance(h, int) and h != crop) or (isinstance(w, int) and w != crop):
        raise LowformerError(f"{name} takes {h}x{w} images but the preprocessing crops {crop}x{crop}; "
                             f"validate it with a matching manifest")


def _validation_record(s: ModelScore, result: ValidationResult) -> ValidationRecord:
    return ValidationRecord(
        date=result.date, passed=None if s.passed is None else bool(s.passed), error=s.error,
        data=result.data["root"], images=s.images,
        limit=result.data["limit"], label_source=result.data["label_source"], preprocessing=result.preprocessing,
        top1=s.top1, top5=s.top5, reference_top1=result.reference.top1, reference_top5=result.reference.top5,
        top1_delta=s.top1_delta, agreement=s.agreement, cosine=s.cosine, max_abs=s.max_abs,
        flipped=len(s.flipped), flipped_images=s.flipped[:MAX_FLIPS_IN_MANIFEST], gate=s.gate, failures=s.failures,
        top1_delta_ci=s.top1_delta_ci, mcnemar_p=s.mcnemar_p, decision=s.decision)


def _record(items: Sequence[Item], scores: List[ModelScore], result: ValidationResult,
            lock_timeout: float = _artifacts.DEFAULT_LOCK_TIMEOUT_S) -> None:
    """Write each artifact's outcome into its manifest entry (one locked update per manifest)."""
    by_folder: Dict[Path, List[Tuple[ArtifactEntry, ModelScore]]] = {}
    for (path, entry, manifest), score in zip(items, scores):
        if entry is not None:
            by_folder.setdefault(_folder_of(path, entry), []).append((entry, score))
    for folder, pairs in by_folder.items():
        def apply(manifest: Manifest) -> None:
            for entry, s in pairs:
                target = manifest.entry(entry.path)
                if target is None:
                    continue
                if entry.sha256 and target.sha256 != entry.sha256:  # re-exported meanwhile: other bytes
                    log.warning("not recorded for %s: it was replaced while it was validated (validate it again)",
                                entry.path)
                    continue
                if s.runtime or (s.inference_precision or "f32") != "f32":
                    # another runtime or precision than the artifact's own: kept beside its validation
                    key = f"{s.runtime or s.backend}/{s.inference_precision or 'f32'}"
                    target.set_validation_run(key, _validation_record(s, result))
                else:
                    target.validation = _validation_record(s, result)
                gain = next((g for g in result.distillation if g["artifact"] == s.name), None)
                if gain is not None and target.int8.get("qat"):  # the report shows it beside the baseline
                    target.facts["int8"]["qat"]["validated_gain"] = {**gain, "images": s.images,
                                                                     "date": result.date}
        _artifacts.update(folder, apply, timeout=lock_timeout)  # re-read under the lock: others may write meanwhile


@dataclass(frozen=True)
class GateConfig(Config):
    """The accuracy gates of `validate`, overriding the precision's defaults (DEFAULT_GATES; None:
    the default): `gate_top1_drop`, the most top-1 may drop against the reference, in percentage
    points (fp16 0.2, int8 1.0); `gate_agreement`, the least share of images whose top-1 class is the
    reference's, 0..1 (fp32 0.999, fp16 0.995)."""

    gate_top1_drop: Optional[float] = None
    gate_agreement: Optional[float] = None

    def checked(self) -> "GateConfig":
        """Itself, or one LowformerError for an agreement outside 0..1."""
        if self.gate_agreement is not None and not 0.0 <= self.gate_agreement <= 1.0:
            raise LowformerError("the agreement gate is a fraction between 0 and 1 (e.g. 0.999)")
        return self

    def gate(self, precision: str) -> Gate:
        """The gate of an artifact of `precision`."""
        return Gate.for_precision(precision, self.gate_top1_drop, self.gate_agreement)


VALIDATE_BATCH_SIZE = 50


@dataclass(frozen=True)
class ValidateConfig(Config):
    """Everything `validate` is asked, one typed object (its fields' fields also as flat keywords:
    `validate(paths, data, limit=100, runtimes=("openvino",))`).

    `images`: which images and their preprocessing (lowformer.evaluate.config.DataConfig: labels,
    limit, batch_size (default 50), workers, seed, skip_bad_images, crop_ratio, interpolation, mean,
    std); `run`: where the artifacts run (lowformer.engines.config.RunConfig: device, threads,
    runtimes, precisions); `gate`: the accuracy gates (GateConfig: gate_top1_drop, gate_agreement);
    `ref`: the PyTorch reference (lowformer.evaluate.config.ReferenceConfig: reference, checkpoint,
    verify). `report`: also write the full result as JSON to this file; `record`: write each
    artifact's outcome into its manifest entry; `skip_missing`: skip manifest entries whose file is
    missing (else an error); `lock_timeout`: seconds to wait while another process writes a folder
    this records into; `distributed`: this process is one rank of `torchrun` (RANK of WORLD_SIZE):
    it scores its shard and the ranks gather their records (see `validate`)."""

    images: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    ref: ReferenceConfig = field(default_factory=ReferenceConfig)
    report: Optional[PathLike] = None
    record: bool = True
    skip_missing: bool = False
    lock_timeout: float = _artifacts.DEFAULT_LOCK_TIMEOUT_S
    distributed: bool = False

    def __post_init__(self) -> None:
        if self.images.batch_size is None:
            object.__setattr__(self, "images", self.images.replace(batch_size=VALIDATE_BATCH_SIZE))


def validate(artifacts: Sequence[str], data: PathLike, config: Optional[ValidateConfig] = None,
             progress: Progress = no_progress, explain_plan: Optional[Any] = None,
             **fields: Any) -> ValidationResult:
    """Top-1/top-5 of the PyTorch reference and every artifact on one pass over `data`.

    `config`: a ValidateConfig, or its fields (and its nested configs' fields) as keywords: labels,
    limit, batch_size, workers, seed, skip_bad_images, crop_ratio, interpolation, mean, std (the
    images), device, threads, runtimes, precisions (where they run), gate_top1_drop, gate_agreement,
    reference, checkpoint, verify, report, record, skip_missing, lock_timeout, distributed. An
    unknown keyword is one LowformerError.

    `verify`: "cache" trusts `.verified.json` for files whose stat is unchanged; "full" re-hashes
    every artifact and the reference checkpoint.

    `runtimes` / `precisions` (lowformer.engines.runtimes): also run ONNX artifacts through OpenVINO,
    at each OpenVINO inference precision; every such run is scored and gated on its own.

    `distributed` (a process of `torchrun --nproc-per-node N`): this rank scores its shard (RANK+1
    of WORLD_SIZE, `validate_shard`), the ranks gather their records over torch.distributed (gloo;
    nccl with device cuda) and every rank returns the whole result, the figures of one process over
    all images; only rank 0 writes the `report` and records the manifests. A rank that fails fails
    every rank with one LowformerError line naming it.

    `explain_plan` (`validate --explain`): a `lowformer.explain.prepare_explain(...)` plan of the same
    artifacts and data, explained in the same pass (each image decoded once): on validate's images
    (held out, subset, seed), preprocessing and batches (give prepare_explain the same `batch_size`:
    its figures are then those of `plan.run()`). Its ExplainResult is `result.explained()`, which
    raises what stopped it (a failing boundary runner does not stop the validation); it is in
    `result.to_dict()["explain"]`, in the `report`, and with `record` in the manifests too."""
    config = ValidateConfig.build(config, **fields)
    if config.distributed:
        from lowformer.evaluate.gather import gather_records

        shard = Shard.from_torchrun() or Shard()
        records = gather_records(lambda: _score_images(artifacts, data, config, progress, explain_plan, shard)[0],
                                 config.run.device)
        return _finish(records, _items_of(records), config, writer=shard.index == 1,
                       explain_from=explain_plan.merged if explain_plan is not None else None)
    records, items, explaining = _score_images(artifacts, data, config, progress, explain_plan, Shard())
    return _finish(records, items, config, explaining=explaining)


def validate_shard(artifacts: Sequence[str], data: PathLike, shard: Union[str, Shard],
                   config: Optional[ValidateConfig] = None, progress: Progress = no_progress,
                   explain_plan: Optional[Any] = None, **fields: Any) -> RunRecords:
    """Score shard `shard` ("K/N") of the images `validate` would score with the same arguments: a
    deterministic, class-stratified share of whole batches (lowformer.evaluate.shards). Returns its
    per-image records (`.write(path)`); `merge_validation` of every shard's records gives the result
    of one process over all images. Nothing is gated or recorded in the manifests. `explain_plan`:
    also explain on the shard (its block sums, batch by batch, go into the records)."""
    config = ValidateConfig.build(config, **fields)
    shard = Shard.parse(shard) if isinstance(shard, str) else shard
    return _score_images(artifacts, data, config, progress, explain_plan, shard)[0]


def merge_validation(files: Sequence[PathLike], config: Optional[ValidateConfig] = None,
                     explain_from: Optional[Callable[..., Any]] = None, **fields: Any) -> ValidationResult:
    """The result of a run from its shards' records files (`validate --shard K/N --records FILE`):
    checked to be every shard of one run once (one LowformerError line naming what is not), then
    scored as one process over all images; `report` and `record` as in `validate` (the artifacts'
    manifests are found at the paths the first shard recorded). Shards run with an explain plan are
    explained too when `explain_from` is lowformer.explain.explanation_from_records."""
    from lowformer.evaluate.records import merge

    config = ValidateConfig.build(config, **fields)
    records = merge(files)
    return _finish(records, _items_of(records), config, explain_from=explain_from)


def _score_images(artifacts: Sequence[str], data: PathLike, config: ValidateConfig, progress: Progress,
                  explain_plan: Optional[Any], shard: Shard) -> Tuple[RunRecords, List[Item], Optional[Deferred]]:
    """The pass of a run (or of its shard): (the per-image records, the artifacts, the explanation)."""
    import torch

    from lowformer.data.imagenet import list_samples
    from lowformer.engines import PyTorchRunner, load_artifacts
    from lowformer.engines.base import InputSpec

    opts, run, gates = config.images.checked(), config.run, config.gate.checked()
    if not artifacts:
        raise LowformerError("name at least one artifact, export folder or manifest")
    ref = config.ref.checked()
    limit, seed, threads, device = opts.limit, opts.seed, run.threads, run.device
    share = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if config.distributed else 1  # ranks on this node
    if threads is None and share > 1:  # torchrun's ranks share the cores: one share each
        threads = max(1, (os.cpu_count() or 1) // share)
    started = time.perf_counter()
    listed = list_samples(data, opts.labels)  # data errors first: they are cheap to find

    warnings: List[str] = list(getattr(listed, "warnings", []))  # e.g. images the labels file misses
    loaded = load_artifacts(list(artifacts), device, threads, config.skip_missing, warnings, run.runtimes,
                            run.precisions, full=ref.full)
    items = [(p, e, m) for p, e, m, _ in loaded]
    runners = [r for *_, r in loaded]
    warnings += [w for r in runners for w in r.warnings]
    try:
        samples, held_out = select_images(listed, items, data, limit, seed)
        if held_out and not samples:
            raise LowformerError(f"every image of {data} calibrated an INT8 artifact: validate on other images")
        if held_out:
            warnings.append(f"held out {len(held_out)} image(s) of {data} that calibrated an INT8 artifact: "
                            f"evaluating on the other {len(samples)}")

        size = next((r.input_spec.shape[-1] for r in runners if isinstance(r.input_spec.shape[-1], int)), 224)
        ref_model, manifest, ref_name, real_checkpoint, pre = resolve_reference(items, ref, int(size), warnings,
                                                                                images=opts)
        paths = list(dict.fromkeys(p for p, _, _ in items))  # one artifact may run in several runtimes/precisions
        short = dict(zip(paths, _unique_names(paths)))
        names = [f"{short[p]} ({r.variant})" if r.variant else short[p] for (p, _, _), r in zip(items, runners)]
        for r, name in zip(runners, names):
            _check_input_size(r, pre.crop, name)
        if threads:
            torch.set_num_threads(threads)
        ref_runner = PyTorchRunner(ref_model, InputSpec(shape=(None, 3, pre.crop, pre.crop)), device=device)

        scores = [ModelScore(n, r.backend, r.precision if r.variant else (e.precision if e else r.precision), str(p),
                             runtime=r.runtime, inference_precision=r.hint)
                  for n, r, (p, e, _) in zip(names, runners, items)]
        for s in scores:
            s.gate = asdict(gates.gate(s.precision))
        positions = shard_positions(samples, opts.batch_size, shard)
        scorer = Scorer(ref_runner, runners, ref_name, names, listed.label_source, positions)
        images = Images(listed, samples, held_out, pre, limit, seed)
        explaining = None if explain_plan is None else Deferred(explain_plan.consumer(images))
        workers = default_workers(share) if opts.workers is None else max(0, opts.workers)
        passed = [samples[i] for i in positions]
        what = "validating" if shard.whole else f"validating shard {shard}"
        bad = run_pass(passed, pre, opts.batch_size, workers, [scorer] + ([explaining] if explaining else []),
                       progress, opts.skip_bad_images, what)
    finally:
        for r in runners:
            r.close()
    at = {str(s.path): i for i, s in enumerate(samples)}
    setup = {"artifacts": [_artifact_setup(s, item) for s, item in zip(scores, items)],
             "reference": {"name": ref_name, "real_checkpoint": bool(real_checkpoint),
                           "checkpoint_sha256": _reference_sha(manifest, ref)},
             "preprocessing": pre.to_dict(), "batch_size": opts.batch_size, "explain": explain_plan is not None,
             "device": device,
             "data": {**listed.describe(), "images": 0, "limit": limit, "seed": seed,
                      "held_out_calibration_images": len(held_out)},
             "images": {"checksum": image_list_checksum(samples, listed.root), "count": len(samples),
                        "labels": [int(s.label) for s in samples]}}
    records = RunRecords(shard, setup, [int(p) for p in scorer.ref.columns["index"]],
                         [str(samples[p].path) for p in scorer.ref.columns["index"]], scorer.ref, scorer.tallies,
                         list(scorer.errors), [{**b, "position": at[b["path"]]} for b in bad], warnings,
                         _machine(), time.perf_counter() - started,
                         _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if explaining is not None:  # the block sums too, for a merge (one process reads its consumer instead)
        error = explaining.error
        records.explain = [{"records": explaining.consumer.to_records(),
                            "error": None if error is None else first_line(error, typed=not isinstance(
                                error, LowformerError))}]
    if records.reference.nonfinite_at:  # nothing to compare with: refused, whatever the artifacts did
        ref_tally = records.reference.finish(records.labels, records.path_of())
        raise LowformerError(ref_tally.nonfinite_failure(f"the reference {ref_name}") +
                             ": its weights hold NaN/Inf or it overflows; no artifact can be validated against it")
    return records, items, explaining


def _artifact_setup(s: ModelScore, item: Item) -> Dict[str, Any]:
    """What the records keep of an artifact: its score's identity and gate, sha256, what it distils."""
    path, entry, _ = item
    qat = (entry.int8.get("qat") or {}) if entry else {}
    return {"score": {"name": s.name, "backend": s.backend, "precision": s.precision, "path": s.path,
                      "runtime": s.runtime, "inference_precision": s.inference_precision, "gate": s.gate},
            "sha256": entry.sha256 if entry and entry.sha256 else _file_sha(path),
            "post_training_of": entry.int8.get("post_training_of") if entry else None,
            "qat_post_training": qat.get("post_training"), "qat_steps": qat.get("steps")}


def _file_sha(path: PathLike) -> Optional[str]:
    from lowformer.core.files import sha256_file

    return sha256_file(path) if Path(path).is_file() else None


def _reference_sha(manifest: Optional[Manifest], ref: ReferenceConfig) -> Optional[str]:
    if ref.checkpoint is not None:
        return _file_sha(ref.checkpoint)
    return manifest.checkpoint.get("sha256") if manifest is not None else None


def _items_of(records: RunRecords) -> List[Item]:
    """The (path, entry, manifest) of each artifact the records name, for recording into the manifests
    (entry None where the file is gone or its manifest entry now holds other bytes)."""
    from lowformer.engines import resolve_artifacts

    out: List[Item] = []
    for a in records.run["artifacts"]:
        path = a["score"]["path"]
        try:
            found = resolve_artifacts([path], False, [], False)
        except LowformerError:
            found = []
        p, entry, manifest = found[0] if found else (path, None, None)
        if entry is not None and entry.sha256 != a["sha256"]:
            entry = None  # re-exported since: its manifest no longer describes what was scored
            log.warning("not recorded for %s: it was replaced after it was validated", path)
        elif entry is None:
            log.warning("not recorded for %s: no manifest entry of it here", path)
        out.append((p, entry, manifest))
    return out


def _finish(records: RunRecords, items: Sequence[Item], config: ValidateConfig, writer: bool = True,
            explaining: Optional[Deferred] = None, explain_from: Optional[Callable[..., Any]] = None
            ) -> ValidationResult:
    """The result from a run's records; its report and manifest records when `writer`. The
    explanation: of this process's pass (`explaining`), or of the shards' (`explain_from`)."""
    result = result_from_records(records, items)
    if explaining is not None or (explain_from is not None and records.explain):
        try:
            if explaining is not None:
                if explaining.error is not None:
                    raise explaining.error
                result.explanation = explaining.consumer.result(result.data["bad_images"])
            else:
                failed = next((e["error"] for e in records.explain if e["error"]), None)
                if failed:
                    raise LowformerError(failed)
                by_path = {a["score"]["path"]: item for a, item in zip(records.run["artifacts"], items)}
                result.explanation = explain_from([e["records"] for e in records.explain], by_path,
                                                  result.data["bad_images"])
        except Exception as e:  # raised by result.explained(), once the validation is shown and recorded
            result.explain_error = e
    if writer and config.report is not None:
        write_json(config.report, result.to_dict())
    if writer and config.record:
        record_validation(result, config.lock_timeout)
        if result.explanation is not None:
            result.explanation.record(config.lock_timeout)
    return result


def result_from_records(records: RunRecords, items: Sequence[Item] = ()) -> ValidationResult:
    """The figures, gates and warnings of a run from its per-image records (one process's, or its
    shards' merged): the same whichever way the images were split. `items`: the artifacts'
    (path, entry, manifest), kept for `record_validation`."""
    run = records.run
    labels, paths = records.labels, records.path_of()
    ref_tally = records.reference.finish(labels, paths)
    if ref_tally.n == 0:
        raise LowformerError("no readable images to validate")
    ref_score = ModelScore(run["reference"]["name"], "pytorch", "fp32", None)
    _fill(ref_score, ref_tally)
    not_applied = gates_not_applied(records.reference.num_classes, run["data"]["label_source"])
    scores, tallies = [], []
    for a, t, error in zip(run["artifacts"], records.artifacts, records.errors):
        s = ModelScore(**a["score"])
        t.finish(labels, paths, records.reference)
        s.error = error
        _score(s, ref_score, ref_tally, t, not_applied)
        if a["post_training_of"] and s.error is None:  # compared with its distilled model: never gated
            s.gate = {**(s.gate or {}), "applied": False,
                      "reason": f"the post-training baseline of {a['post_training_of']} (export --qat-steps)"}
            s.failures, s.passed = [], None
        scores.append(s)
        tallies.append(t)
    warnings = list(records.warnings)
    if run["reference"]["real_checkpoint"] and near_chance(ref_score.top1, records.reference.num_classes,
                                                           ref_tally.n):
        chance = 100.0 / records.reference.num_classes
        warnings.append(f"the reference scores {ref_score.top1:.2f}% top-1 (chance {chance:.2f}%) with a real "
                        f"checkpoint: the labels probably do not follow the model's class order "
                        f"(labels: {run['data']['label_source']})")
    if any((s.gate or {}).get("applied") is False for s in scores):
        warnings.append(f"accuracy gates not applied: {not_applied}")
    bad = [{"path": b["path"], "error": b["error"]} for b in sorted(records.bad_images, key=lambda b: b["position"])]
    if bad:
        shown = ", ".join(b["path"] for b in bad[:MAX_BAD_NAMED])
        more = f" and {len(bad) - MAX_BAD_NAMED} more (all in --report)" if len(bad) > MAX_BAD_NAMED else ""
        warnings.append(f"skipped {len(bad)} unreadable image(s): {shown}{more}")
    data_info = {**run["data"], "images": ref_tally.n, "bad_images": bad}
    result = ValidationResult(data_info, run["preprocessing"], ref_score, scores, warnings, records.seconds,
                              records.date, machine=records.machine)
    result.items = list(items)  # what `record_validation` writes into (not part of the JSON)
    result.distillation = qat_gains(run["artifacts"], scores, tallies)
    return result


def _score(s: ModelScore, ref_score: ModelScore, ref_tally: Tally, t: Tally, not_applied: Optional[str]) -> None:
    """An artifact's figures, gate and verdict from its tally (`s.error`: why it stopped being run)."""
    _fill(s, t)
    if s.error is None and t.n and t.nonfinite:  # NaN agrees, compares and argmaxes by accident
        s.top1_delta = s.top1 - ref_score.top1
        s.failures = [t.nonfinite_failure(f"the artifact {s.name}")]
    elif s.error is None and t.n:
        s.top1_delta = s.top1 - ref_score.top1
        s.agreement = t.agree / t.n
        s.cosine = finite_or_none(t.cos_sum / t.n)
        s.max_abs = finite_or_none(t.max_abs)
        s.rel_l2 = finite_or_none(float(np.sqrt(t.sq_diff / max(t.sq_ref, 1e-300))))
        s.flipped = t.flips
        s.failures = Gate(**s.gate).failures(s.top1_delta, s.agreement)  # type: ignore[arg-type]
        if not_applied:  # recorded as not applied, with the reason: neither passed nor failed
            s.gate, s.failures = {**(s.gate or {}), "applied": False, "reason": not_applied}, []
        _paired_statistics(s, ref_tally, t)
    elif s.error is None:
        s.error = "no images were run"
    if s.error:
        s.failures = [s.error]
    s.passed = s.error is None and not s.failures
    if s.passed and (s.gate or {}).get("applied") is False:
        s.passed = None


def record_validation(result: ValidationResult, lock_timeout: float = _artifacts.DEFAULT_LOCK_TIMEOUT_S) -> None:
    """Write each artifact's outcome into its manifest entry (one locked update per folder)."""
    _record(result.items, result.artifacts, result, lock_timeout)


def _machine() -> Dict[str, Any]:
    """The CPU the artifacts ran on: INT8 and BF16 accuracy can depend on its kernels (VNNI, AMX)."""
    from lowformer.core.machine import cpu_flags, cpu_isa, cpu_model

    flags = cpu_flags()
    return {"cpu": cpu_model(), "isa": cpu_isa(flags), "cpu_flags": flags}


def _paired_statistics(score: ModelScore, ref: Tally, art: Tally) -> None:
    """Is the top-1 delta real or noise of the data set: bootstrap interval, McNemar p, a sentence."""
    ref_c, art_c = np.concatenate(ref.correct), np.concatenate(art.correct)
    if len(ref_c) != len(art_c) or not len(ref_c):
        return
    ci = paired_bootstrap_delta(ref_c, art_c)
    score.top1_delta_ci = [round(ci[0], 4), round(ci[1], 4)]
    score.mcnemar_p = mcnemar_exact(int((ref_c & ~art_c).sum()), int((~ref_c & art_c).sum()))
    score.decision = drop_decision(ci, (score.gate or {}).get("max_top1_drop"))


def qat_gains(artifacts: Sequence[Dict[str, Any]], scores: Sequence[ModelScore],
              tallies: Sequence[Tally]) -> List[Dict[str, Any]]:
    """Each distilled INT8 artifact (`export --qat-steps`) against its post-training model, when both
    ran on these images: the top-1 gain, its paired bootstrap interval and McNemar's p. `artifacts`:
    the run's artifacts as its records keep them (`qat_post_training`, `qat_steps`)."""
    by_path = {a["score"]["path"]: (s, t) for a, s, t in zip(artifacts, scores, tallies) if s.error is None and t.n}
    out = []
    for a, s, t in zip(artifacts, scores, tallies):
        baseline = a.get("qat_post_training")
        other = by_path.get(str(Path(a["score"]["path"]).with_name(baseline))) if baseline else None
        if other is None or s.error is not None or not t.n:
            continue
        ptq_c, qat_c = np.concatenate(other[1].correct), np.concatenate(t.correct)
        if len(ptq_c) != len(qat_c):
            continue
        ci = paired_bootstrap_delta(ptq_c, qat_c)
        out.append({"artifact": s.name, "post_training": other[0].name, "top1": s.top1, "post_training_top1": other[0].top1,
                    "top1_gain": round(s.top1 - other[0].top1, 4), "top1_gain_ci": [round(ci[0], 4), round(ci[1], 4)],
                    "mcnemar_p": mcnemar_exact(int((ptq_c & ~qat_c).sum()), int((~ptq_c & qat_c).sum())),
                    "steps": a.get("qat_steps")})
    return out


def _fill(score: ModelScore, tally: Tally) -> None:
    score.images = tally.n
    score.top1 = round(tally.pct(tally.top1), 4)
    score.top5 = round(tally.pct(tally.top5), 4)


from lowformer.core.command_module import callable_as_command  # noqa: E402

callable_as_command(__name__)  # `lowformer.validate(...)` stays the API function
