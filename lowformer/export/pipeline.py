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
from lowformer.core.errors import LowformerError, NeedsTargetDevice
from lowformer.models.fusion import fuse
from lowformer.core.files import ensure_dir
from lowformer.models.factory import create_model
from lowformer.models.registry import ModelSpec, resolve
from lowformer import artifacts
from lowformer.artifacts import DEFAULT_LOCK_TIMEOUT_S, MANIFEST_NAME, ArtifactEntry, Manifest, ParityRecord
from lowformer.calibrate.cache import CACHE_DIRNAME
from lowformer.export.speed import int8_speed_check, slower_int8_warning
from lowformer.export.staging import Staging
from lowformer.export.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx
from lowformer.export.prepare import groupnorm1_paths
from lowformer.core.progress import Progress, no_progress
from lowformer.data.preprocess import Preprocessing

TARGETS = ("torchscript", "onnx", "trt", "pt2", "openvino")
FILENAMES = {("torchscript", "fp32"): "model.ts", ("pt2", "fp32"): "model.pt2", ("onnx", "fp32"): "model.onnx",
             ("onnx", "fp16"): "model_fp16.onnx", ("onnx", "int8"): "model_int8.onnx",
             ("openvino", "fp32"): "model.xml", ("openvino", "fp16"): "model_fp16.xml",
             ("openvino", "int8"): "model_int8.xml"}

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    out: Path
    manifest_path: Path
    artifacts: List[ArtifactEntry] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    next_steps: List[str] = field(default_factory=list)

    @property
    def failed(self) -> List[str]:
        return [a.path for a in self.artifacts if a.parity is not None and not a.parity.passed]

    @property
    def exit_code(self) -> int:
        if self.failed:
            return 1
        return 3 if self.next_steps else 0

    def to_dict(self) -> Dict[str, Any]:
        return {"out": str(self.out), "manifest": str(self.manifest_path),
                "artifacts": [a.to_dict() for a in self.artifacts],
                "failed": self.failed, "warnings": self.warnings, "next_steps": self.next_steps,
                "exit_code": self.exit_code}


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

    def __init__(self, model_name: str, checkpoint: Optional[str] = None, image_size: int = 224,
                 batch_size: Optional[int] = None, opset: int = 17, out: Optional[str] = None,
                 do_fuse: bool = True, data: Optional[str] = None, progress: Progress = no_progress):
        self.spec = resolve(model_name)
        self.progress = progress
        self.image_size, self.batch_size, self.opset = image_size, batch_size, opset
        out_dir = Path(out or default_out_dir(self.spec, image_size))
        shape = [batch_size, 3, image_size, image_size]
        reused = _reusable_random_weights(out_dir, self.spec, shape) if checkpoint is None else None
        _refuse_replacing_trained(out_dir, self.spec, shape, checkpoint)
        self.reference = create_model(model_name, reused or checkpoint)
        # the reference's own logits first: a model that gives NaN/Inf is refused before anything is written
        self.inputs = parity_inputs(self.spec, image_size, data)
        with torch.no_grad():
            self.ref_logits = self.reference(torch.from_numpy(self.inputs)).numpy()
        _refuse_nonfinite_reference(self.reference, self.ref_logits, self.spec, reused or checkpoint)
        self.out = ensure_dir(out_dir)
        self.result = ExportResult(self.out, self.out / MANIFEST_NAME)
        self.staging = Staging(self.out)
        try:
            self._prepare(model_name, checkpoint, reused, image_size, batch_size, do_fuse, data, shape)
        except BaseException:
            self.staging.discard()
            raise

    def _prepare(self, model_name: str, checkpoint: Optional[str], reused: Optional[str], image_size: int,
                 batch_size: Optional[int], do_fuse: bool, data: Optional[str], shape: List[Optional[int]]) -> None:
        if checkpoint is None:
            self.warn(f"no checkpoint: {self.spec.display} has RANDOM weights; its artifacts are for "
                      "testing the toolchain, not for accuracy")
        if reused:
            log.info("reusing the random weights of %s (%s), so every artifact there stays consistent",
                     self.out, RANDOM_WEIGHTS)
        self.model = copy.deepcopy(self.reference)
        self.fused = fuse(self.model).folded if do_fuse else 0
        self.manifest = Manifest.new(
            model={"name": self.spec.name, "timm_name": self.spec.timm_name, "display": self.spec.display,
                   "num_classes": int(self.ref_logits.shape[1]), "fused_batchnorms": self.fused},
            checkpoint=self._checkpoint_record(checkpoint, reused),
            input_spec={"name": INPUT_NAME, "output": OUTPUT_NAME, "shape": shape, "dtype": "float32",
                        "dynamic_axes": {} if batch_size else {INPUT_NAME: {"0": "batch"}, OUTPUT_NAME: {"0": "batch"}}},
            preprocessing=self.spec.preprocessing(image_size).to_dict())
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
        return self.staging.path(FILENAMES[(fmt, precision)])

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
            else:
                stale = [a.path for a in current.artifacts if a.path not in mine]
                if stale and not current.random_weights:
                    raise LowformerError(_stale_message(self.out, stale))
                for name in stale:
                    (self.out / name).unlink(missing_ok=True)
                    if name.endswith(".xml"):  # an OpenVINO IR is a pair: its weights go with it
                        (self.out / name).with_suffix(".bin").unlink(missing_ok=True)
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

    def torchscript(self) -> ArtifactEntry:
        from lowformer.export.torchscript import export_torchscript

        path = self.path("torchscript", "fp32")
        example = torch.from_numpy(self.inputs[: self.batch_size or 1])
        facts = export_torchscript(self.model, path, example)
        for note in facts["notes"]:
            self.warn(note)
        return self.check_and_record(path, "torchscript", "fp32", facts)

    def onnx(self) -> ArtifactEntry:
        path = self.path("onnx", "fp32")
        facts = export_onnx(self.model, path, self.image_size, self.batch_size, self.opset)
        for note in facts["notes"]:
            self.warn(note)
        if facts["ops"].get("BatchNormalization"):
            self.warn(f"{facts['ops']['BatchNormalization']} BatchNormalization nodes remain in the ONNX")
        return self.check_and_record(path, "onnx", "fp32", facts)

    def ensure_onnx(self) -> Path:
        path = self.path("onnx", "fp32")
        if not any(a.path == path.name for a in self.result.artifacts):
            self.onnx()
        return path

    def fp16(self) -> ArtifactEntry:
        from lowformer.export.fp16 import convert_fp16

        src = self.ensure_onnx()
        path = self.path("onnx", "fp16")
        facts = convert_fp16(src, path, groupnorm1_paths(self.model))
        return self.check_and_record(path, "onnx", "fp16", {"opset": self.opset, **facts})

    def int8(self, **calib: Any) -> ArtifactEntry:
        from lowformer.calibrate.quantize import quantize_onnx

        src = self.ensure_onnx()
        path = self.path("onnx", "int8")
        calib.setdefault("cache_dir", self.out / CACHE_DIRNAME)  # the cache outlives the staging folder
        facts = quantize_onnx(src, path, Preprocessing.from_dict(self.manifest.preprocessing),
                              str(self.manifest.checkpoint.get("sha256") or "unknown"),
                              progress=self.progress, **calib)
        facts["speed_check"] = int8_speed_check(src, path, str(calib.get("target") or "cpu"))
        fp32 = next((a for a in self.result.artifacts if a.path == src.name), None)
        slower = slower_int8_warning(facts["speed_check"], src.name,
                                     fp32.parity.passed if fp32 is not None and fp32.parity else None)
        if slower:
            self.warn(slower)
        return self.check_and_record(path, "onnx", "int8", {"opset": self.opset, **facts})

    def pt2(self) -> List[ArtifactEntry]:
        """model.pt2 (torch.export, dynamic batch unless --batch-size) and its AOTInductor package
        model_aoti_cpu.pt2 (and model_aoti_cuda.pt2 with a GPU), each checked like every artifact."""
        from lowformer.export.pt2 import AOTI_NAMES, aoti_devices, compile_aoti, export_program, save_program

        dynamic = self.batch_size is None
        example = torch.from_numpy(self.inputs[: self.batch_size or 2])
        program, facts = export_program(self.model, example, dynamic)
        path = self.path("pt2", "fp32")
        facts.update(save_program(program, path))
        entries = [self.check_and_record(path, "pt2", "fp32", facts)]
        for device in aoti_devices():
            package = self.staging.path(AOTI_NAMES[device])
            entries.append(self.check_and_record(package, "aoti", "fp32",
                                                 compile_aoti(program, package, device, dynamic, path.name)))
        return entries

    def openvino(self, int8: bool = False, quantizer: str = "qdq", keep_f32: Optional[Sequence[str]] = None,
                 **calib: Any) -> List[ArtifactEntry]:
        """model.xml (FP32 IR) and model_fp16.xml (FP16-compressed weights) from model.onnx, the
        `keep_f32` blocks marked to stay f32 under a bf16/f16 hint (none by default); with
        `int8`, model_int8.xml: NNCF's (quantizer nncf) or the Q/DQ ONNX converted (quantizer qdq)."""
        from lowformer.export.openvino import convert_onnx, keep_f32_blocks, nncf_quantize

        src = self.ensure_onnx()
        keep = keep_f32_blocks(keep_f32)
        entries = []
        for precision, compress in (("fp32", False), ("fp16", True)):
            path = self.path("openvino", precision)
            facts = convert_onnx(src, path, compress, keep)
            entries.append(self.check_and_record(path, "openvino", precision, facts))
        if int8:
            path = self.path("openvino", "int8")
            if quantizer == "nncf":
                facts = nncf_quantize(src, path, Preprocessing.from_dict(self.manifest.preprocessing),
                                      progress=self.progress, **calib)
            else:
                qdq = self.path("onnx", "int8")
                made = next((a for a in self.result.artifacts if a.path == qdq.name), None) or self.int8(**calib)
                facts = {**convert_onnx(qdq, path), "int8": {**made.int8, "quantizer": "qdq", "source": qdq.name},
                         "calibration": made.calibration}
            entries.append(self.check_and_record(path, "openvino", "int8", facts))
        return entries

    def trt(self, precision: str, **build: Any) -> None:
        from lowformer.engines.tensorrt import build_engine, require_tensorrt_support

        onnx_path = self.out / FILENAMES[("onnx", precision)]
        require_tensorrt_support(onnx_path)  # one line (exit 1) before the exit-3 device step
        try:
            entry = build_engine(str(onnx_path), str(onnx_path.with_suffix(".engine")),
                                 fp16=precision == "fp16", int8=precision == "int8",
                                 manifest_folder=str(self.out), **build)
            record = ArtifactEntry.from_dict(entry)
            self.manifest.upsert(record)  # build_engine recorded it in the folder; keep ours in step
            self.result.artifacts.append(record)
        except NeedsTargetDevice as e:
            self.result.next_steps.append(str(e))  # the CLI prints it once, last


def export_model(model: str, to: Sequence[str] = ("onnx",), fp16: bool = False, int8: bool = False,
                 checkpoint: Optional[str] = None, image_size: int = 224, batch_size: Optional[int] = None,
                 opset: int = 17, out: Optional[str] = None, do_fuse: bool = True, data: Optional[str] = None,
                 calib: Optional[Dict[str, Any]] = None, trt_build: Optional[Dict[str, Any]] = None,
                 progress: Progress = no_progress, lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
                 keep_f32: Optional[Sequence[str]] = None) -> ExportResult:
    """Export `model` to every target in `to` (torchscript, onnx, trt, pt2, openvino) and check each
    artifact's parity. `keep_f32`: the blocks OpenVINO IRs keep at f32 under a bf16/f16 hint."""
    unknown = [t for t in to if t not in TARGETS]
    if unknown or not to:
        raise LowformerError(f"targets must be among {', '.join(TARGETS)}")
    if keep_f32 and "openvino" not in to:
        raise LowformerError("keep_f32 marks blocks of an OpenVINO IR: add --to openvino")
    if int8 and not (calib or {}).get("calib_data"):
        raise LowformerError("INT8 needs calibration images (calib_data)")
    if fp16 and int8 and "trt" in to:
        raise LowformerError("a TensorRT export builds one engine: choose one of FP16 and INT8")
    if "trt" in to and int8 and (calib or {}).get("target", "cpu") == "cpu":
        raise LowformerError("a TensorRT INT8 engine needs the tensorrt INT8 target (int8_target): a cpu-target "
                             "graph (u8 activations, non-zero zero points) cannot build")
    if calib and calib.get("calib_data") and not os.path.isdir(calib["calib_data"]):
        raise LowformerError(f"calibration data {calib['calib_data']}: no such folder")
    if data and not os.path.isdir(data):
        raise LowformerError(f"parity data {data}: no such folder")
    calib, quantizer = dict(calib or {}), None
    if int8 or "openvino" in to:  # before any work: OpenVINO (and NNCF) are optional packages
        from lowformer.export.openvino import check_openvino_export

        quantizer = check_openvino_export(to, int8, calib)
    if "pt2" in to:  # before any work: the AOTInductor package needs a C++ compiler
        from lowformer.export.pt2 import find_cpp_compiler

        find_cpp_compiler()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ex = Exporter(model, checkpoint, image_size, batch_size, opset, out, do_fuse, data, progress)
        try:
            with _temporaries_in(ex.staging.path("work")):
                if "torchscript" in to:
                    ex.torchscript()
                if "pt2" in to:
                    ex.pt2()
                if "onnx" in to or "trt" in to or "openvino" in to:
                    ex.ensure_onnx()
                    if fp16:
                        ex.fp16()
                    if int8 and quantizer != "nncf":
                        ex.int8(**calib)
                if "openvino" in to:
                    ex.openvino(int8, quantizer or "qdq", keep_f32, **calib)
            ex.commit(lock_timeout=lock_timeout)
        finally:
            ex.staging.discard()
        if "trt" in to:  # built from the committed ONNX; build_engine records the engine itself
            ex.trt("fp16" if fp16 else "int8" if int8 else "fp32", **(trt_build or {}))
            pending = list(ex.result.next_steps)  # what remains to run on the target device

            def set_pending(m: Manifest) -> None:
                m.pending = pending
            ex.manifest = artifacts.update(ex.out, set_pending, timeout=lock_timeout)
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
        ex = Exporter(model, checkpoint, image_size, out=out)
        try:
            with _temporaries_in(ex.staging.path("work")):
                ex.ensure_onnx()
            ex.commit()
        finally:
            ex.staging.discard()
        return ex.out / "model.onnx", ex.manifest
