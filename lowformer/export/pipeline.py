"""build -> load checkpoint -> eval -> fuse -> export -> parity check -> manifest."""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from lowformer.models.checkpoints import sha256_file
from lowformer.compare import PARITY_THRESHOLDS, compare_logits, finite_or_none, nonfinite, parity_passes
from lowformer.core.errors import LowformerError
from lowformer.models.fusion import fuse
from lowformer.core.files import ensure_dir
from lowformer.models.factory import create_model
from lowformer.models.registry import ModelSpec, resolve
from lowformer import artifacts
from lowformer.artifacts import DEFAULT_LOCK_TIMEOUT_S, MANIFEST_NAME, ArtifactEntry, Manifest, ParityRecord
from lowformer.calibrate.cache import CACHE_DIRNAME
from lowformer.export.config import ExportConfig
from lowformer.export.speed import int8_speed_check, slower_int8_warning
from lowformer.export.staging import Staging
from lowformer.export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
from lowformer.export.prepare import groupnorm1_paths
from lowformer.engines import registry
from lowformer.engines.backend import Backend
from lowformer.core.progress import Progress, no_progress
from lowformer.data.preprocess import Preprocessing

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    out: Path
    manifest_path: Path
    artifacts: List[ArtifactEntry] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    next_steps: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)  # steps that failed though their artifact stands

    @property
    def failed(self) -> List[str]:
        """Artifacts that failed their parity check; a post-training model kept beside its distilled
        version (`--qat-steps`) is a baseline to compare with, not a deliverable."""
        return [a.path for a in self.artifacts if a.parity is not None and not a.parity.passed
                and not a.int8.get("post_training_of")]

    @property
    def exit_code(self) -> int:
        if self.failed or self.errors:
            return 1
        return 3 if self.next_steps else 0

    def to_dict(self) -> Dict[str, Any]:
        return {"out": str(self.out), "manifest": str(self.manifest_path),
                "artifacts": [a.to_dict() for a in self.artifacts],
                "failed": self.failed, "errors": self.errors, "warnings": self.warnings,
                "next_steps": self.next_steps, "exit_code": self.exit_code}


def default_out_dir(spec: ModelSpec, image_size: int) -> Path:
    return Path("artifacts") / f"{spec.name.replace('timm:', '')}-{image_size}"


def parity_inputs(spec: ModelSpec, image_size: int, data: Optional[str], n_random: int = 4,
                  n_images: int = 16) -> np.ndarray:
    """A fixed batch: seeded random tensors, plus real images (preprocessed) when `data` is given."""
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((n_random, 3, image_size, image_size)).astype(np.float32)]
    if data:
        from lowformer.data.imagenet import any_images, load_images, stratified_subset

        # class-stratified, so the real images span classes rather than the first folder's
        samples = stratified_subset(any_images(data, "data").samples, n_images)
        batches.append(load_images(samples, spec.preprocessing(image_size)))
    return np.concatenate(batches)


RANDOM_WEIGHTS = "random-init.pt"
CHECKPOINT_NAME = "checkpoint.pt"  # the copy of --checkpoint an export folder keeps


def _weights_id(manifest: Manifest, folder: Path) -> Optional[str]:
    """The sha256 of the weights a manifest was exported from (manifests before 0.2 wrote
    "random-init" for random weights: then the file in the folder says)."""
    sha = manifest.checkpoint.get("sha256")
    if sha == "random-init":
        f = folder / RANDOM_WEIGHTS
        return sha256_file(f) if f.is_file() else None
    return sha


def _same_export(old: Manifest, fresh: Manifest, folder: Path) -> bool:
    """Whether `old` describes the same model, weights and input as `fresh` (so its entries stay)."""
    return old.model == fresh.model and old.input == fresh.input and \
        _weights_id(old, folder) == _weights_id(fresh, folder)


def _reusable_random_weights(out: Path, spec: ModelSpec, input_shape: List[Optional[int]]) -> Optional[str]:
    """The folder's own random weights when it holds a random-weights export of the same model and
    input: a re-export then keeps every artifact of the folder consistent with one set of weights."""
    if not (out / MANIFEST_NAME).is_file() or not (out / RANDOM_WEIGHTS).is_file():
        return None
    try:
        old = Manifest.load(out)
    except LowformerError:
        return None
    same = old.random_weights and old.model_name == spec.name and old.input_shape == input_shape
    return str(out / RANDOM_WEIGHTS) if same else None


def _stale_message(out: Path, names: List[str]) -> str:
    return (f"{out} holds artifacts exported from other weights or for another input ({', '.join(names)}): "
            "export with the same checkpoint, or into another output folder")


def _refuse_replacing_trained(out: Path, spec: ModelSpec, input_shape: List[Optional[int]],
                              checkpoint: Optional[str]) -> None:
    """Before any work: artifacts of a trained checkpoint are never replaced by other weights."""
    if not (out / MANIFEST_NAME).is_file():
        return
    try:
        old = Manifest.load(out)
    except LowformerError:
        return  # an unreadable manifest is replaced; the commit re-checks under the lock
    if old.random_weights or not old.artifacts:
        return
    same = checkpoint is not None and old.model_name == spec.name and old.input_shape == input_shape and \
        old.checkpoint.get("sha256") == sha256_file(checkpoint)
    if not same:
        raise LowformerError(_stale_message(out, [a.path for a in old.artifacts]))


@contextlib.contextmanager
def _temporaries_in(folder: Path) -> Iterator[None]:
    """Temporary files of this export (calibration models, quantizer scratch) go in its staging
    folder, so a failed or killed export takes them with it."""
    folder.mkdir(exist_ok=True)
    old, tempfile.tempdir = tempfile.tempdir, str(folder.resolve())  # absolute: compilers run elsewhere
    try:
        yield
    finally:
        tempfile.tempdir = old


def _refuse_nonfinite_reference(model: torch.nn.Module, logits: np.ndarray, spec: ModelSpec,
                                 weights: Optional[str]) -> None:
    """One line (no export) when the reference gives NaN/Inf on the parity batch: every artifact
    would compare NaN with NaN. Names the first non-finite weight when there is one."""
    what = f"the reference model {spec.display} ({'checkpoint ' + weights if weights else 'random weights'})"
    bad = nonfinite(logits, what, "parity input")
    if bad is None:
        return
    tensor = next((k for k, v in model.state_dict().items()
                   if torch.is_floating_point(v) and not torch.isfinite(v).all()), None)
    why = f"its weight {tensor} holds NaN/Inf" if tensor else "its weights are finite: it overflows"
    raise LowformerError(f"{bad} ({why}): refused before any export")


class Exporter:
    """Holds the model pair (reference and fused) and writes artifacts into one folder."""

    def __init__(self, model_name: str, config: ExportConfig, progress: Progress = no_progress):
        self.spec = resolve(model_name)
        self.config, self.progress = config, progress
        checkpoint, image_size, batch_size = config.checkpoint, config.image_size, config.batch_size
        self.image_size, self.batch_size, self.opset = image_size, batch_size, config.opset
        out_dir = Path(config.out or default_out_dir(self.spec, image_size))
        shape = [batch_size, 3, image_size, image_size]
        reused = _reusable_random_weights(out_dir, self.spec, shape) if checkpoint is None else None
        _refuse_replacing_trained(out_dir, self.spec, shape, checkpoint)
        self.reference = create_model(model_name, reused or checkpoint)
        # the reference's own logits first: a model that gives NaN/Inf is refused before anything is written
        self.inputs = parity_inputs(self.spec, image_size, config.data)
        with torch.no_grad():
            self.ref_logits = self.reference(torch.from_numpy(self.inputs)).numpy()
        _refuse_nonfinite_reference(self.reference, self.ref_logits, self.spec, reused or checkpoint)
        self.out = ensure_dir(out_dir)
        self.result = ExportResult(self.out, self.out / MANIFEST_NAME)
        self.superseded: List[str] = []  # files of the folder this export makes obsolete (removed at commit)
        self.staging = Staging(self.out)
        try:
            self._prepare(reused, shape)
        except BaseException:
            self.staging.discard()
            raise

    def _prepare(self, reused: Optional[str], shape: List[Optional[int]]) -> None:
        checkpoint = self.config.checkpoint
        if checkpoint is None:
            self.warn(f"no checkpoint: {self.spec.display} has RANDOM weights; its artifacts are for "
                      "testing the toolchain, not for accuracy")
        if reused:
            log.info("reusing the random weights of %s (%s), so every artifact there stays consistent",
                     self.out, RANDOM_WEIGHTS)
        self.model = copy.deepcopy(self.reference)
        self.fused = fuse(self.model).folded if self.config.fuse else 0
        self.manifest = Manifest.new(
            model={"name": self.spec.name, "timm_name": self.spec.timm_name, "display": self.spec.display,
                   "num_classes": int(self.ref_logits.shape[1]), "fused_batchnorms": self.fused},
            checkpoint=self._checkpoint_record(checkpoint, reused),
            input_spec={"name": INPUT_NAME, "output": OUTPUT_NAME, "shape": shape, "dtype": "float32",
                        "dynamic_axes": {} if self.batch_size else {INPUT_NAME: {"0": "batch"},
                                                                    OUTPUT_NAME: {"0": "batch"}}},
            preprocessing=self.spec.preprocessing(self.image_size).to_dict())
        from lowformer.core.machine import cpu_flags, cpu_isa

        flags = cpu_flags()  # the ISA decides which kernels (INT8, BF16) the CPU artifacts were checked with
        self.manifest.tools.update({"cpu_isa": cpu_isa(flags), "cpu_flags": " ".join(flags)})

    def _checkpoint_record(self, checkpoint: Optional[str], reused: Optional[str]) -> Dict[str, Any]:
        if reused:
            return {"path": RANDOM_WEIGHTS, "sha256": sha256_file(reused), "size": os.path.getsize(reused),
                    "source": "random-init"}
        if checkpoint:
            # a copy travels with the artifacts: validation rebuilds the reference from the folder
            # alone (a path outside it is refused, like an artifact's; Manifest.checkpoint_path)
            shutil.copyfile(checkpoint, self.staging.path(CHECKPOINT_NAME))
            copy = self.staging.path(CHECKPOINT_NAME)
            return {"path": CHECKPOINT_NAME, "sha256": sha256_file(copy), "size": copy.stat().st_size,
                    "source": os.path.abspath(checkpoint)}
        # Random weights: keep them, so validation can rebuild the very same reference model.
        weights = self.staging.path(RANDOM_WEIGHTS)
        torch.save(self.reference.state_dict(), weights)
        return {"path": RANDOM_WEIGHTS, "sha256": sha256_file(weights), "size": weights.stat().st_size,
                "source": "random-init"}

    def warn(self, msg: str) -> None:
        self.result.warnings.append(msg)
        log.warning(msg)

    def path(self, fmt: str, precision: str) -> Path:
        """Where this run writes an artifact: the staging folder (moved into place by `commit`)."""
        return self.staging.path(_file_name(fmt, precision))

    def staged(self, name: str) -> Path:
        return self.staging.path(name)

    def committed(self, fmt: str, precision: str) -> Path:
        return self.out / _file_name(fmt, precision)

    def adopt(self, entry: ArtifactEntry) -> None:
        """An entry a writer recorded in the folder itself (a TensorRT build): keep ours in step."""
        self.manifest.upsert(entry)
        self.result.artifacts.append(entry)

    def next_step(self, message: str) -> None:
        self.result.next_steps.append(message)  # the CLI prints it once, last

    def record(self, entry: ArtifactEntry) -> None:
        self.manifest.upsert(entry)
        self.result.artifacts.append(entry)

    def commit(self, pending: Optional[List[str]] = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> None:
        """Move every staged file into the folder and write the manifest, under the folder lock.

        The folder's manifest is kept (and extended) when it describes the same model, weights and
        input. Otherwise its artifacts are stale: those of random weights are removed (said in one
        line); those of a trained checkpoint are never replaced by other weights (refused).
        """
        mine = {a.path for a in self.manifest.artifacts}

        def apply(current: Optional[Manifest]) -> Manifest:
            if current is None or _same_export(current, self.manifest, self.out):
                target = current or self.manifest
                if current is not None:
                    target.preprocessing, target.tools = self.manifest.preprocessing, self.manifest.tools
                    target.created, target.checkpoint = self.manifest.created, self.manifest.checkpoint
                for e in self.manifest.artifacts:
                    old = current.entry(e.path) if current is not None else None
                    if old is not None:  # same bytes (e.g. validated while we ran): its records still hold
                        e.carry_records(old)
                    target.upsert(e)
                for name in self.superseded:  # e.g. the post-training baseline of an INT8 model made anew
                    if name not in mine:
                        target.artifacts = [a for a in target.artifacts if a.path != name]
                        (self.out / name).unlink(missing_ok=True)
            else:
                stale = [a.path for a in current.artifacts if a.path not in mine]
                if stale and not current.random_weights:
                    raise LowformerError(_stale_message(self.out, stale))
                for name in stale:
                    (self.out / name).unlink(missing_ok=True)
                    for companion in registry.all_companions(self.out / name):  # an IR's .bin goes with it
                        companion.unlink(missing_ok=True)
                if stale:
                    self.warn(f"removed {len(stale)} artifact(s) of earlier random weights from {self.out}: "
                              f"{', '.join(stale)}")
                target = self.manifest
            if pending is not None:
                target.pending = pending
            return target

        self.manifest = self.staging.commit(apply, lock_timeout)
        self.result.artifacts = [self.manifest.entry(a.path) or a for a in self.result.artifacts]

    def check_and_record(self, path: Path, fmt: str, precision: str, facts: Dict[str, Any]) -> ArtifactEntry:
        """Run the artifact on the parity batch, compare with the unfused model, record it."""
        from lowformer.engines import load

        entry = ArtifactEntry(path.name, fmt, precision, sha256_file(path), facts=dict(facts), size=path.stat().st_size)
        with load(str(path), entry=entry, manifest=self.manifest) as runner:
            logits = runner.run(self.inputs)
        inputs = "random" if len(self.inputs) <= 4 else "random+images"
        bad = nonfinite(logits, f"the artifact {path.name}", "parity input")
        if bad:  # NaN compares false with everything: no metric, a failure that says where
            entry.parity = ParityRecord(None, None, None, None, len(self.inputs),
                                        thresholds=PARITY_THRESHOLDS.get(precision, {}), inputs=inputs,
                                        passed=False, failure=bad)
            self.record(entry)
            log.info("%s (%s %s): PARITY FAILED: %s", self.out / path.name, fmt, precision, bad)
            return entry
        cmp = compare_logits(self.ref_logits, logits)
        passed = parity_passes(cmp, precision)
        metrics = {k: finite_or_none(v) if isinstance(v, float) else v for k, v in cmp.to_dict().items()}
        entry.parity = ParityRecord(**metrics, thresholds=PARITY_THRESHOLDS.get(precision, {}),
                                    inputs=inputs, passed=passed)
        self.record(entry)
        log.info("%s (%s %s): %s rel-L2 %.2e, cosine %.6f, top-1 agreement %.1f%%", self.out / path.name, fmt, precision,
                 "parity ok" if passed else "PARITY FAILED", cmp.rel_l2, cmp.cosine, 100 * cmp.top1_agreement)
        return entry

    def _recorded(self, path: Path) -> Optional[ArtifactEntry]:
        return next((a for a in self.result.artifacts if a.path == path.name), None)

    def ensure_onnx(self) -> Path:
        """model.onnx, the graph every ONNX-based target starts from: written and checked once."""
        path = self.path("onnx", "fp32")
        if self._recorded(path) is None:
            facts = export_onnx(self.model, path, self.image_size, self.batch_size, self.opset)
            for note in facts["notes"]:
                self.warn(note)
            if facts["ops"].get("BatchNormalization"):
                self.warn(f"{facts['ops']['BatchNormalization']} BatchNormalization nodes remain in the ONNX")
            self.check_and_record(path, "onnx", "fp32", facts)
        return path

    def fp16_onnx(self) -> ArtifactEntry:
        from lowformer.export.fp16 import convert_fp16

        src = self.ensure_onnx()
        path = self.path("onnx", "fp16")
        facts = convert_fp16(src, path, groupnorm1_paths(self.model))
        return self.check_and_record(path, "onnx", "fp16", {"opset": self.opset, **facts})

    def int8_onnx(self) -> ArtifactEntry:
        """The Q/DQ INT8 ONNX (lowformer.calibrate), calibrated once per export."""
        from lowformer.calibrate.qat import post_training_path
        from lowformer.calibrate.quantize import quantize_onnx

        src = self.ensure_onnx()
        path = self.path("onnx", "int8")
        made = self._recorded(path)
        if made is not None:
            return made
        calib = self.config.calib
        facts = quantize_onnx(src, path, Preprocessing.from_dict(self.manifest.preprocessing), calib,
                              str(self.manifest.checkpoint.get("sha256") or "unknown"),
                              cache_dir=self.out / CACHE_DIRNAME,  # the cache outlives the staging folder
                              progress=self.progress)
        facts["speed_check"] = int8_speed_check(src, path, str(calib.target or "cpu"))
        fp32 = self._recorded(src)
        slower = slower_int8_warning(facts["speed_check"], src.name,
                                     fp32.parity.passed if fp32 is not None and fp32.parity else None)
        if slower:
            self.warn(slower)
        qat = facts["int8"].get("qat") or {}
        if not qat.get("post_training"):  # an earlier distilled export's baseline no longer belongs to this model
            self.superseded.append(post_training_path(path).name)
        if qat.get("failed"):  # the post-training model stands; the export still fails
            self.result.errors.append(f"{path.name}: {qat['failed']}")
        elif qat.get("post_training"):  # recorded beside the distilled one: validate scores both
            ptq = {**facts, "int8": {**{k: v for k, v in facts["int8"].items() if k != "qat"},
                                     "post_training_of": path.name}}
            self.check_and_record(path.with_name(qat["post_training"]), "onnx", "int8", {"opset": self.opset, **ptq})
        return self.check_and_record(path, "onnx", "int8", {"opset": self.opset, **facts})

    @property
    def weights_sha256(self) -> str:
        return str(self.manifest.checkpoint.get("sha256") or "unknown")

    def calibration_images(self) -> Tuple[np.ndarray, Any]:
        """(preprocessed images, their ImageSet): the calibration images `config.calib` selects (for
        quantizers that calibrate a model rather than an ONNX file)."""
        from lowformer.calibrate.data import select_calibration
        from lowformer.data.imagenet import load_images

        calib = self.config.calib
        if not calib.calib_data:
            raise LowformerError("INT8 needs calibration images (calib_data)")
        chosen = select_calibration(calib.calib_data, calib.calib_size)
        return load_images(chosen.samples, Preprocessing.from_dict(self.manifest.preprocessing)), chosen

    def cache_file(self, kind: str, key: Dict[str, Any], suffix: str) -> Path:
        """A file of the folder's calibration cache (it outlives the staging folder) named by `key`."""
        from lowformer.calibrate.cache import key_digest

        folder = self.out / CACHE_DIRNAME
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{kind}-{key_digest(key)[:16]}{suffix}"

    def quantize_ir(self, quantizer: str, src: Path, dst: Path) -> Dict[str, Any]:
        """An INT8 model written by a runtime's own quantizer (NNCF for OpenVINO IR) from `src`."""
        if quantizer != "nncf":
            raise LowformerError(f"unknown quantizer {quantizer!r}")
        from lowformer.calibrate.nncf import nncf_quantize

        return nncf_quantize(src, dst, Preprocessing.from_dict(self.manifest.preprocessing), self.config.calib,
                             progress=self.progress)


def _file_name(fmt: str, precision: str) -> str:
    names = registry.owner(fmt).artifact_names
    if (fmt, precision) not in names:
        raise LowformerError(f"no {precision} artifact of format {fmt} is written by an export")
    return names[(fmt, precision)]


def _writers(targets: Sequence[str]) -> List[Backend]:
    """The backends that write `targets` and every target they need first, in writing order."""
    out: List[Backend] = []
    todo = list(targets)
    while todo:
        b = registry.writer(todo.pop(0))
        if b not in out:
            out.append(b)
            todo += [registry.writer(t).export_targets[0] for t in b.export_needs]
    return sorted(out, key=lambda b: b.export_order)


def _check_config(config: ExportConfig, writers: List[Backend]) -> ExportConfig:
    """Before any work: every target's own option goes with that target, the data folders exist,
    each writer accepts the export, and the INT8 quantizer is chosen (lowformer.calibrate.nncf).
    Returns the config with that choice made."""
    asked = [registry.writer(t) for t in config.to]
    for b in registry.all_backends():
        for key in b.export_options:
            if getattr(config, key, None) and b not in asked:
                raise LowformerError(f"{key} is an option of {b.label} artifacts: add --to {b.export_targets[0]}")
    calib = config.calib
    if config.int8 and not calib.calib_data:
        raise LowformerError("INT8 needs calibration images (calib_data)")
    if calib.calib_data and not os.path.isdir(calib.calib_data):
        raise LowformerError(f"calibration data {calib.calib_data}: no such folder")
    if config.data and not os.path.isdir(config.data):
        raise LowformerError(f"parity data {config.data}: no such folder")
    for b in writers:
        b.check_export(config)
    if not config.int8:
        _check_qat(config, writers)
        return config
    from lowformer.calibrate.nncf import check_quantizer

    calib = check_quantizer(calib, any("nncf" in b.quantizers for b in writers))
    if calib.quantizer != "qdq" and not any(calib.quantizer in b.quantizers for b in writers):
        owners = [b for b in registry.all_backends() if calib.quantizer in b.quantizers]
        raise LowformerError(f"the {calib.quantizer} quantizer writes {' / '.join(b.label for b in owners) or 'no'} "
                             "artifacts: add " + " or ".join(f"--to {b.export_targets[0]}" for b in owners)
                             + " (or use --quantizer qdq for a Q/DQ ONNX)")
    config = config.replace(calib=calib)
    _check_qat(config, writers)
    return config


def _check_qat(config: ExportConfig, writers: List[Backend]) -> None:
    """--qat-steps: with INT8, its folders and teacher present, and only where the Q/DQ ONNX is what ships."""
    qat = config.calib.qat
    qat.check(config.int8)
    if not qat.enabled:
        return
    if qat.qat_data and not os.path.isdir(qat.qat_data):
        raise LowformerError(f"distillation data {qat.qat_data}: no such folder")
    if qat.qat_teacher and not os.path.isfile(qat.qat_teacher):
        raise LowformerError(f"teacher {qat.qat_teacher}: no such ONNX file")
    if config.calib.quantizer == "nncf":
        raise LowformerError("--qat-steps trains the Q/DQ ONNX: use --quantizer qdq (NNCF quantizes on its own)")
    own = [b.label for b in writers if not b.int8_from_qdq]
    if own:
        raise LowformerError(f"--qat-steps trains the Q/DQ ONNX; {', '.join(own)} quantize(s) post-training on "
                             "its own: export those without --qat-steps")
    from lowformer.calibrate.data import select_calibration

    images = len(select_calibration(qat.qat_data or config.calib.calib_data, config.calib.calib_size))
    if images < qat.qat_batch_size:
        raise LowformerError(f"quantization-aware distillation: {images} image(s) are fewer than --qat-batch-size "
                             f"{qat.qat_batch_size}")


def export_model(model: str, config: Optional[ExportConfig] = None, progress: Progress = no_progress,
                 **fields: Any) -> ExportResult:
    """Export `model` to every target of `config.to` (the registered writers:
    registry.export_targets()) and check each artifact's parity against the unfused model.

    `config`: an ExportConfig, or its fields as keywords (`to=("onnx", "openvino"), int8=True,
    calib={"calib_data": ...}`)."""
    config = ExportConfig.build(config, **fields)
    known = registry.export_targets()
    if not config.to or any(t not in known for t in config.to):
        raise LowformerError(f"targets must be among {', '.join(known)}")
    config = config.replace(to=tuple(dict.fromkeys(registry.writer(t).export_targets[0] for t in config.to)))
    writers = _writers(config.to)
    config = _check_config(config, writers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ex = Exporter(model, config, progress)
        try:
            with _temporaries_in(ex.staging.path("work")):
                for b in writers:
                    b.export(ex, config)
            ex.commit(lock_timeout=config.lock_timeout)
        finally:
            ex.staging.discard()
        later = [b for b in writers if type(b).after_commit is not Backend.after_commit]
        for b in later:  # e.g. a TensorRT engine, built from the committed ONNX (it records itself)
            b.after_commit(ex, config)
        if later:
            pending = list(ex.result.next_steps)  # what remains to run on the target device

            def set_pending(m: Manifest) -> None:
                m.pending = pending
            ex.manifest = artifacts.update(ex.out, set_pending, timeout=config.lock_timeout)
    return ex.result


def fp32_onnx(model: str, checkpoint: Optional[str] = None, image_size: int = 224,
              out: Optional[str] = None) -> Tuple[Path, Manifest]:
    """(model.onnx, manifest): from an export folder, or exported now (fused, checked)."""
    folder = Path(model)
    if folder.is_dir():
        if not (folder / MANIFEST_NAME).is_file() or not (folder / "model.onnx").is_file():
            raise LowformerError(f"{model}: an export folder needs manifest.json and model.onnx "
                                 "(export the model to ONNX first)")
        return folder / "model.onnx", Manifest.load(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ex = Exporter(model, ExportConfig(checkpoint=checkpoint, image_size=image_size, out=out))
        try:
            with _temporaries_in(ex.staging.path("work")):
                ex.ensure_onnx()
            ex.commit()
        finally:
            ex.staging.discard()
        return ex.out / "model.onnx", ex.manifest
