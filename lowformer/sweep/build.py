"""The artifacts of the benchmark table: each format's file written with the pipeline's writers into a
cache folder per model and image size, checked against the eager model, and recorded in `build.json`.

Weights are random (seeded: every build of a model has the same ones), since speed does not depend on
them. A format already built and recorded `ok` is kept; one that failed is tried again. A failure is a
result (its `status` says why), not an exception: a peer that does not export is a cell of the table.
"""
from __future__ import annotations

import copy
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from lowformer.core.errors import first_line
from lowformer.core.files import write_json
from lowformer.sweep.formats import CALIBRATED, FILES, FORMAT_TITLES, RUNS, prerequisite

log = logging.getLogger(__name__)

RECORD = "build.json"
LOCK = ".build.lock"
REFERENCE = "reference.pt"  # the eager model's weights, for `validate --reference MODEL --checkpoint`
PARITY_IMAGES = 2  # random images each artifact is compared on against the eager model
BUILD_ORDER = ("torchscript", "pt2", "aoti", "onnx-fp32", "onnx-fp16", "openvino-fp32", "openvino-bf16",
               "executorch-fp32", "onnx-int8", "openvino-int8", "executorch-int8")


def cache_folder(cache: Path, name: str, size: int) -> Path:
    """The cache folder of a model at an image size: `<cache>/<name>-<size>` (timm:x as timm_x)."""
    from lowformer.models.registry import resolve

    return Path(cache) / f"{resolve(name).name.replace(':', '_')}-{size}"


def inference_model(name: str):
    """(eager model, deployable model): peers in their reparameterized inference form (MobileOne,
    FastViT, RepViT are benchmarked the way their papers deploy them), then BatchNorm folded."""
    from timm.utils.model import reparameterize_model

    from lowformer.models.factory import create_model
    from lowformer.models.fusion import fuse

    import torch

    torch.manual_seed(0)  # the same random weights in every run, so a resumed run can rebuild one artifact
    eager = reparameterize_model(create_model(name)).eval()
    deploy = copy.deepcopy(eager)
    fuse(deploy)
    return eager, deploy


def display_name(spec) -> str:
    """The paper's name of a peer ('MobileNetV3-L (mobilenetv3_large_100)'), else the model's own."""
    from lowformer.models.catalog import PEERS

    peer = next((p for p, t in PEERS if t and spec.timm_name == t and spec.family == "timm"), None)
    return f"{peer} ({spec.timm_name})" if peer else spec.display


def model_facts(name: str, size: int) -> Dict[str, Any]:
    """What the table shows of a model: display name, family, parameters, MACs per image at `size`."""
    from lowformer.models.complexity import count_macs
    from lowformer.models.registry import count_parameters, resolve

    spec = resolve(name)
    eager, _ = inference_model(spec.name)
    return {"display": display_name(spec), "family": spec.family, "params": count_parameters(eager),
            "macs": int(count_macs(eager, size))}


def needed(formats: Optional[Sequence[str]], calib: Optional[Path]) -> List[str]:
    """The formats to build for `formats` (None: every one), prerequisites first; INT8 ones only with
    calibration images."""
    if formats is None:
        want = set(BUILD_ORDER)
    else:
        want = {f for f in formats if f in FILES}
        want |= {prerequisite(f) for f in want if prerequisite(f)}
    return [f for f in BUILD_ORDER if f in want and (calib is not None or f not in CALIBRATED)]


class _Models:
    """The eager and deployable model and the reference logits, made on first use (a folder whose
    artifacts are all built never builds the model)."""

    def __init__(self, name: str, size: int):
        self.name, self.size = name, size
        self._made: Optional[tuple] = None
        self._error: Optional[Exception] = None

    def get(self):
        if self._error is not None:  # a model that cannot be built fails every format alike, built once
            raise self._error
        if self._made is None:
            import torch

            try:
                eager, deploy = inference_model(self.name)
            except Exception as e:
                self._error = e
                raise
            x = np.random.default_rng(0).standard_normal((PARITY_IMAGES, 3, self.size, self.size)).astype(np.float32)
            with torch.no_grad():
                ref = eager(torch.from_numpy(x)).numpy()
            self._made = (eager, deploy, x, ref)
        return self._made


def build(name: str, folder: Path, size: int, calib: Optional[Path],
          formats: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Write the artifacts of `formats` (None: model.ts, model.pt2, model_aoti_cpu.pt2, model.onnx,
    model_fp16.onnx, the ExecuTorch .pte and, with `calib`, the INT8 ONNX of the cpu and openvino targets
    and the INT8 .pte) into `folder` with the pipeline's writers, and their prerequisites; check each (and
    the FP32 ONNX in OpenVINO at f32 and bf16) against the eager model on two random images. Returns the
    folder's record (`build.json`): {"model", "image_size", "artifacts": {format: {"status", ...}}}.
    Several processes may build into one folder: they take turns (a lock file)."""
    from filelock import FileLock

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / LOCK)):
        return _build_locked(name, folder, size, calib, needed(formats, calib))


def _build_locked(name: str, folder: Path, size: int, calib: Optional[Path], todo: Sequence[str]) -> Dict[str, Any]:
    record_path = folder / RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record.get("model") != name or record.get("image_size") != size:
        record = {"model": name, "image_size": size, "artifacts": {}, "notes": []}
    models = _Models(name, size)
    steps = _steps(name, folder, size, calib, models)
    for fmt in todo:
        path = folder / FILES[fmt]
        done = record["artifacts"].get(fmt, {})
        if path.is_file() and done.get("status") == "ok":
            continue
        needs = prerequisite(fmt)
        if needs and record["artifacts"].get(needs, {}).get("status") != "ok":
            record["artifacts"][fmt] = {"status": f"skipped: no {FORMAT_TITLES[needs]} artifact"}
            continue
        record["artifacts"][fmt] = _build_one(fmt, path, steps[fmt], models)
        if record["artifacts"][fmt]["status"] != "ok":
            log.warning("%s %s: %s", name, fmt, record["artifacts"][fmt]["status"])
        write_json(record_path, record)
    return record


def _build_one(fmt: str, path: Path, step: Callable[[Path], Any], models: _Models) -> Dict[str, Any]:
    """One artifact written and compared with the eager model: its record entry."""
    from lowformer.compare import compare_logits, parity_passes

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            step(path)
        _, _, x, ref = models.get()
        cmp = compare_logits(ref, run_artifact(fmt, path, x))
        precision = {"bf16": "fp16"}.get(fmt.split("-")[-1], fmt.split("-")[-1]) if "-" in fmt else "fp32"
        return {"status": "ok", "path": path.name, "cosine": cmp.cosine, "rel_l2": cmp.rel_l2,
                "parity": parity_passes(cmp, precision), "seconds": round(time.perf_counter() - t0, 1)}
    except Exception as e:  # a peer that does not export is a result, not a crash
        return {"status": f"failed: {first_line(e, limit=200, typed=True)}"}


def _steps(name: str, folder: Path, size: int, calib: Optional[Path], models: _Models) -> Dict[str, Callable]:
    """format -> the function that writes its file (given the path)."""
    import torch

    from lowformer.engines.pt2.writer import compile_aoti, export_program, save_program
    from lowformer.engines.torchscript.writer import export_torchscript
    from lowformer.export.fp16 import convert_fp16
    from lowformer.export.onnx_export import export_onnx
    from lowformer.export.prepare import groupnorm1_paths

    def deploy():
        return models.get()[1]

    def pt2(p: Path) -> None:
        ep, _ = export_program(deploy(), torch.zeros(1, 3, size, size))
        save_program(ep, p)

    def aoti(p: Path) -> None:
        with open(folder / FILES["pt2"], "rb") as f:
            compile_aoti(torch.export.load(f), p)

    def pte(p: Path, images: Optional[np.ndarray] = None) -> None:
        from lowformer.engines.executorch.writer import capture, lower, quantize, save

        example = torch.zeros(1, 3, size, size)
        program = capture(deploy(), example) if images is None else quantize(deploy(), example, images)[0]
        save(lower(program, what=p.name), p)

    steps: Dict[str, Callable[[Path], Any]] = {
        "torchscript": lambda p: export_torchscript(deploy(), p, torch.zeros(1, 3, size, size)),
        "pt2": pt2,
        "aoti": aoti,
        "onnx-fp32": lambda p: export_onnx(deploy(), p, size),
        "onnx-fp16": lambda p: convert_fp16(folder / FILES["onnx-fp32"], p, groupnorm1_paths(deploy())),
        "openvino-fp32": lambda p: None,  # the FP32 ONNX, read by OpenVINO
        "openvino-bf16": lambda p: None,
        "executorch-fp32": pte,
    }
    if calib is not None:
        from lowformer.calibrate.config import CalibrationConfig
        from lowformer.calibrate.quantize import quantize_onnx
        from lowformer.models.registry import resolve

        for fmt, target in (("onnx-int8", "cpu"), ("openvino-int8", "openvino")):
            steps[fmt] = (lambda t: lambda p: quantize_onnx(
                folder / FILES["onnx-fp32"], p, resolve(name).preprocessing(size),
                CalibrationConfig(calib_data=str(calib), calib_size=16, method="minmax", target=t)))(target)
        steps["executorch-int8"] = lambda p: pte(p, calibration_images(name, size, calib))
    return steps


def calibration_images(name: str, size: int, calib: Path, count: int = 16) -> np.ndarray:
    """The same 16 images the INT8 ONNX calibrate on, preprocessed for the model (XNNPACK's PT2E)."""
    from lowformer.calibrate.data import select_calibration
    from lowformer.data.imagenet import load_images
    from lowformer.models.registry import resolve

    return load_images(select_calibration(str(calib), count).samples, resolve(name).preprocessing(size))


def run_artifact(fmt: str, path: Path, x: np.ndarray) -> np.ndarray:
    """The logits of `x` from the artifact of `fmt` at `path`, loaded as the table times it."""
    from lowformer.engines import load

    runtime, precision = RUNS.get(fmt, (None, None))
    with load(str(path), "cpu", runtime=runtime, inference_precision=precision) as runner:
        return np.asarray(runner.run(x))


def write_reference(name: str, folder: Path) -> Path:
    """The eager model's weights (before reparameterization, as `create_model(name)` builds it) as a
    checkpoint in `folder`: the reference `validate` compares the artifacts with (same random weights)."""
    import torch

    from lowformer.core.files import atomic_path
    from lowformer.models.factory import create_model

    path = Path(folder) / REFERENCE
    if not path.is_file():
        torch.manual_seed(0)  # as inference_model: the weights the artifacts were made from
        model = create_model(name)
        with atomic_path(path) as tmp:
            torch.save(model.state_dict(), tmp)
    return path
