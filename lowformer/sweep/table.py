"""The benchmark table: `results-<isa>.json` (every figure) and `RESULTS-<isa>.md` (the report written
from it), one pair per CPU ISA, so that a run on one machine never replaces another's. Written by
`benchmarks/run.py` and by `lowformer sweep`, which merges its cells into the pair of each ISA its
nodes have (cells of earlier runs kept, the same cell replaced).

results-<isa>.json, schema 1: {"schema": 1, "models": {name: {"display", "family", "params", "macs",
"artifacts"}}, "cells": {"model|format|batch": cell (lowformer.sweep.cells)}, "machine" (lowformer.core.
machine.machine_info), "date", "notes": [...], "settings": {"image_size", "threads", "cell_seconds",
"rounds", "max_iterations", "batch_sizes", ("quick"; a sweep's "command", "per_cell")}, "peaks":
{"fp32_gflops", "int8_gops": {...}} ({} when not measured), "physical_limits": [...]}.
"""
from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

from lowformer.core.errors import LowformerError
from lowformer.core.files import atomic_path, write_json
from lowformer.core.harness import UNSTEADY_ROUNDS
from lowformer.sweep.formats import FORMAT_TITLES, FORMATS, FP32_FORMATS, INT8_FORMATS

DRIFT_LISTED = 10  # drifted cells named in the report


def results_name(isa: str) -> str:
    """results-<isa>.json: one table per CPU ISA, so a run on one machine does not replace another's."""
    from lowformer.core.machine import slug

    return f"results-{slug(isa)}.json" if isa else "results.json"


def report_path(results_path: Path) -> Path:
    """RESULTS-<isa>.md beside results-<isa>.json."""
    return results_path.with_name("RESULTS" + results_path.name[len("results"):]).with_suffix(".md")


# --------------------------------------------------------------------------- merging


def read_results(path: Path) -> Optional[Dict[str, Any]]:
    """A results JSON, or None when there is none; one line when it cannot be read."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LowformerError(f"cannot read {path}: {e}") from None


def check_mergeable(out: Path, image_size: int) -> None:
    """Refuse, before any work, to merge cells at `image_size` into tables of `out` timed at another size."""
    for path in sorted(Path(out).glob("results-*.json")):
        old = read_results(path) or {}
        size = (old.get("settings") or {}).get("image_size")
        if size is not None and size != image_size:
            raise LowformerError(f"{path} holds cells at {size} px, this sweep is at {image_size} px: "
                                 "give another --out (one table per image size)")


def merge(old: Optional[Dict[str, Any]], new: Dict[str, Any]) -> Dict[str, Any]:
    """`new` (one ISA's results of a sweep) merged into `old` (that ISA's file, or None): the cells and
    models of both (`new` replacing the same key), batch sizes of both, notes of both in order; the
    machine, date, settings and peaks of `new` (peaks of `old` when `new` measured none)."""
    if old is None:
        return copy.deepcopy(new)
    out = copy.deepcopy(old)
    out["models"] = {**old.get("models", {}), **new["models"]}
    out["cells"] = {**old.get("cells", {}), **new["cells"]}
    out["notes"] = list(dict.fromkeys(list(old.get("notes", [])) + list(new["notes"])))
    sizes = sorted(set((old.get("settings") or {}).get("batch_sizes", [])) | set(new["settings"]["batch_sizes"]))
    out["settings"] = {**new["settings"], "batch_sizes": sizes}
    out.update(machine=new["machine"], date=new["date"], schema=1)
    if new.get("peaks"):
        out["peaks"] = new["peaks"]
    out.setdefault("peaks", {})
    return out


def write_results(results: Dict[str, Any], out: Path) -> Path:
    """results-<isa>.json (with its physical limits) and RESULTS-<isa>.md in `out`, for the ISA of
    `results["machine"]`; returns the JSON's path."""
    path = Path(out) / results_name(results["machine"].get("isa", ""))
    results["physical_limits"] = physical_limits(results)
    write_json(path, results)
    write_report(results, report_path(path))
    return path


# --------------------------------------------------------------------------- the report


def _cell(results: Dict[str, Any], model: str, fmt: str, bs: int) -> Optional[Dict[str, Any]]:
    return results["cells"].get(f"{model}|{fmt}|{bs}")


def _fmt_cell(c: Optional[Dict[str, Any]], what: str) -> str:
    if c is None:
        return "–"
    if c.get("status") != "ok":
        return "n/a"
    # INT8 agreement with random weights says nothing (accuracy is `lowformer validate`'s job).
    flag = "" if c.get("parity", True) or c["format"] in INT8_FORMATS else " ⚠"
    return (f"{c['median_ms']:.1f}" if what == "ms" else f"{c['images_per_s']:.1f}") + flag


def _number(value: Optional[float], scale: float, spec: str) -> str:
    return "–" if value is None else format(value / scale, spec)


def physical_limits(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per model: the fastest FP32 and INT8 cells in achieved GFLOP/s and their share of the peaks."""
    peaks = results.get("peaks") or {}
    int8_peak = max(peaks.get("int8_gops", {}).values(), default=None)
    fp32_peak = peaks.get("fp32_gflops")
    rows = []
    for model in results["models"]:
        ok = [c for c in results["cells"].values() if c["model"] == model and c.get("status") == "ok"
              and c.get("gflops") is not None]
        fp = [c for c in ok if c["format"] in FP32_FORMATS]
        q = [c for c in ok if c["format"] in INT8_FORMATS]
        best = max(fp, key=lambda c: c["gflops"], default=None)
        best8 = max(q, key=lambda c: c["gflops"], default=None)
        rows.append({"model": model, "best_fp32": best and {k: best[k] for k in ("format", "batch_size", "images_per_s", "gflops")},
                     "fp32_peak_share": best["gflops"] / fp32_peak if best and fp32_peak else None,
                     "best_int8": best8 and {k: best8[k] for k in ("format", "batch_size", "images_per_s", "gflops")},
                     "int8_peak_share": best8["gflops"] / int8_peak if best8 and int8_peak else None})
    return rows


def _header(results: Dict[str, Any]) -> List[str]:
    """The title, how the file was made, the machine, software, settings and peaks."""
    m, peaks, s = results["machine"], results.get("peaks") or {}, results["settings"]
    name = results_name(m.get("isa", ""))
    if s.get("command"):  # a sweep: its cells merged into this file
        made = (f"Generated by `{s['command']}` on {results['date']} (cells of earlier runs in this file are kept; a "
                f"sweep replaces the cells it times). `python benchmarks/run.py --report-only` rewrites this file "
                f"from `{name}`.")
    else:
        made = (f"Generated by `python benchmarks/run.py{' --quick' if s.get('quick') else ''}` on "
                f"{results['date']}{' (quick subset)' if s.get('quick') else ''}. Regenerate with the same command; "
                f"`--report-only` rewrites this file from `{name}`.")
    lines = ["# CPU benchmarks", "", made, "",
             f"- Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['cpu_flags']) or 'no SIMD flags read'}), "
             f"{m['platform']}"]
    nodes = Counter(c["node"] for c in results["cells"].values() if c.get("node"))
    if nodes:
        timed_on = ", ".join(f"{n} ({k} cell{'s' if k != 1 else ''})" for n, k in sorted(nodes.items()))
        lines.append(f"- Timed on: {timed_on} (each cell's `node` and `isa` in the JSON)")
    lines += [f"- Load average when the run started: {m.get('load_average')} (1/5/15 min) on {m['cores']} cores"
              + (": other work was running, so these numbers are pessimistic." if (m.get('load_average') or [0])[0]
                 > 0.5 * m['cores'] else "."),
              f"- Software: Python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
              f"- Settings: {s['image_size']}×{s['image_size']} input, threads: {s['threads'] or 'runtime default'}, "
              + _timing_setting(s) + "random weights (speed does not depend on them).",
              (f"- Peaks measured here (best of n x n and convolution-shaped GEMMs): FP32 matmul (torch, ONNX Runtime) "
               f"{peaks['fp32_gflops']:.1f} GFLOP/s; INT8 "
               + ", ".join(f"{k} {v:.1f} GOP/s" for k, v in peaks.get("int8_gops", {}).items()) + ".")
              if peaks.get("fp32_gflops") else "- Peaks: not measured (a sweep with `--no-peaks`).", ""]
    return lines


def _timing_setting(s: Dict[str, Any]) -> str:
    if s.get("per_cell"):  # lowformer sweep
        return (f"each cell (model × format × batch) timed alone in its own worker process, one timed cell per node at "
                f"a time, in {s['rounds']} short round(s), about {s['cell_seconds']} s of timed calls per cell in all "
                f"(per round at least 3, at most {s['max_iterations']}, after a warm-up call); the median is over the "
                f"calls of all rounds; ")
    if "rounds" in s:
        return (f"each model × format in its own worker process, timed in {s['rounds']} short round(s) interleaved "
                f"across the formats, about {s['cell_seconds']} s of timed calls per cell in all (per round at least "
                f"3, at most {s['max_iterations']}, after a warm-up call); the median is over the calls of all rounds; ")
    # a run from before the interleaved harness (lowformer/core/harness.py)
    return (f"each model × format timed alone in a fresh process, about {s['cell_seconds']} s of timed calls per "
            f"cell (at least 3, at most {s['max_iterations']}) after one warm-up call; ")


def _validation(results: Dict[str, Any], models: List[str], formats: List[str]) -> List[str]:
    """The validation section of a sweep given images: top-1 and agreement of each validated artifact."""
    rows = []
    for model in models:
        for f in formats:
            v = next((c["validation"] for c in results["cells"].values()
                      if c["model"] == model and c["format"] == f and c.get("validation")), None)
            if v is None:
                continue
            display = results["models"][model]["display"]
            if v.get("error"):
                rows.append(f"| {display} | {FORMAT_TITLES[f]} | error: {v['error']} | | | |")
                continue
            agree = "–" if v.get("agreement") is None else f"{v['agreement'] * 100:.2f}"
            rows.append(f"| {display} | {FORMAT_TITLES[f]} | {v['images']} | {v['top1']:.2f} | "
                        f"{v['reference_top1']:.2f} | {agree} |")
    if not rows:
        return []
    return ["## Validation", "",
            "Each artifact against the eager model with the same (random) weights on the sweep's images: "
            "agreement is the share of images with the eager model's top-1 class.", "",
            "| model | format | images | top-1 % | eager top-1 % | agreement % |", "|---|---|---:|---:|---:|---:|",
            *rows, ""]


def write_report(results: Dict[str, Any], out: Path) -> None:
    """RESULTS-<isa>.md from a results JSON: a table per batch size, the physical limit, the notes."""
    s = results["settings"]
    models = list(results["models"])
    lines = _header(results)
    # the formats this run measured (a table from before a format existed keeps its columns)
    formats = [f for f in FORMATS if any(c["format"] == f for c in results["cells"].values())]
    for bs in s["batch_sizes"]:
        what = "ms" if bs == 1 else "ips"
        title = "median latency, ms per call" if bs == 1 else "throughput, images/s"
        lines += [f"## Batch {bs}: {title}", "",
                  "| model | params (M) | MACs (M) | " + " | ".join(FORMAT_TITLES[f] for f in formats) + " |",
                  "|---|---:|---:|" + "---:|" * len(formats)]
        for model in models:
            info = results["models"][model]
            lines.append(f"| {info['display']} | {_number(info['params'], 1e6, '.2f')} | "
                         f"{_number(info['macs'], 1e6, '.0f')} | "
                         + " | ".join(_fmt_cell(_cell(results, model, f, bs), what) for f in formats) + " |")
        lines.append("")
    lines += _validation(results, models, formats)
    lines += ["## Physical limit", "",
              "Achieved GFLOP/s = MACs × 2 × images/s of the fastest artifact, against the matmul peaks above "
              "(best of a reading before and after the cells, same threads). Over 100% means the peak reading "
              "was disturbed more than the cell by other work on the machine.", "",
              "| model | best FP32 artifact | GFLOP/s | % of FP32 peak | INT8 GOP/s | % of INT8 peak |",
              "|---|---|---:|---:|---:|---:|"]
    for r in physical_limits(results):
        b, q = r["best_fp32"], r["best_int8"]
        lines.append(f"| {results['models'][r['model']]['display']} | "
                     + (f"{FORMAT_TITLES[b['format']]} b{b['batch_size']} | {b['gflops']:.1f} | "
                        f"{'–' if r['fp32_peak_share'] is None else format(r['fp32_peak_share'], '.0%')}"
                        if b else "– | – | –")
                     + " | " + (f"{q['gflops']:.1f} | {r['int8_peak_share']:.0%}" if q and r["int8_peak_share"] else "– | –")
                     + " |")
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in results["notes"]]
    lines += _notes(results)
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _notes(results: Dict[str, Any]) -> List[str]:
    """Why each n/a cell is n/a, the worst drifted cells, the parity flag."""
    m = results["machine"]
    lines = []
    failed = [(k, c["status"]) for k, c in results["cells"].items() if c.get("status") not in ("ok",)]
    if failed:
        reasons = {}
        for k, st in failed:
            model, fmt, _ = k.split("|")
            reasons.setdefault((model, fmt), st)
        lines += [f"- n/a {results['models'].get(m_, {}).get('display', m_)} {FORMAT_TITLES[f]}: {st}"
                  for (m_, f), st in reasons.items()]
    drifted = sorted((c for c in results["cells"].values() if c.get("warning")),
                     key=lambda c: -c["round_spread"])
    if drifted:
        # The worst few name where to look; the JSON holds every cell's round medians.
        worst = drifted[:DRIFT_LISTED]
        lines.append(f"- {len(drifted)} of {len(results['cells'])} cells' round medians are more than "
                     f"{UNSTEADY_ROUNDS:g}x apart in their middle half (75th / 25th percentile: the machine's speed "
                     f"drifted; `round_medians_ms` in {results_name(m.get('isa', ''))}); "
                     f"{'the worst ' + str(len(worst)) if len(drifted) > len(worst) else 'they are'}: "
                     + ", ".join(f"{results['models'].get(c['model'], {}).get('display', c['model'])} "
                                 f"{FORMAT_TITLES[c['format']]} b{c['batch_size']} {c['round_spread']:.2f}x"
                                 for c in worst) + ".")
    if any(not c.get("parity", True) and c["format"] not in INT8_FORMATS for c in results["cells"].values()):
        lines.append("- ⚠: the artifact missed its parity threshold against the eager model (timed anyway).")
    return lines
