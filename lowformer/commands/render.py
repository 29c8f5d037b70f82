"""What the commands show: rich tables, warning, findings and next-step lines on stderr, JSON on stdout.

The commands call the library and hand its results here; nothing here computes a result. Profile
reports: a summary, the top layers (or blocks...), and stage/kind shares side by side so that FP32,
FP16 and INT8 artifacts compare at a glance.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, List, Sequence

import click
from rich.table import Table
from rich.text import Text

from lowformer.commands.errors import error_line
from lowformer.commands.progress import console

if TYPE_CHECKING:  # imported when a profile is shown: it pulls in the engines
    from lowformer.profiling.report import ProfileReport


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def print_table(title: str, columns, rows) -> None:
    table = Table(title=title)
    for c in columns:  # fold, never cut: a narrow or non-terminal stdout still shows every value whole
        table.add_column(c, justify="left" if c == columns[0] else "right", overflow="fold")
    for r in rows:
        table.add_row(*[str(v) for v in r])
    console.print(table)


def warning_line(message: str) -> None:
    console.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False, soft_wrap=True)


def next_step_line(step: str) -> None:
    console.print(f"[bold]next step:[/bold] {step}", highlight=False, soft_wrap=True)


# models, info


def print_models(rows: List[Dict[str, Any]], peers: bool, count: bool) -> None:
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


def print_info(data: Dict[str, Any], image_size: int) -> None:
    console.print(f"[bold]{data['display']}[/bold]  params {data['params'] / 1e6:.2f} M, "
                  f"MACs {data['macs'] / 1e6:.1f} M at {image_size}x{image_size}, checkpoint: {data['checkpoint']}")
    print_table("Output shapes", ["module", "shape"], [(r["module"], "x".join(map(str, r["shape"])))
                                                       for r in data["stages"]])


# export, build-engine, calibrate sensitivity


def print_export(result) -> None:
    """The parity table of an export, the reason of each failure, --auto-exclude's search, next steps."""
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
        qat = a.int8.get("qat") if a.format == "onnx" else None
        if qat and qat.get("loss_curve"):
            first, last = qat["loss_curve"][0][1], qat["loss_curve"][-1][1]
            console.print(f"{a.path}: distilled {qat['steps']} steps on {qat['images']} images in {qat['seconds']:.0f} s "
                          f"(KL {first:.4f} -> {last:.4f}); the post-training model is {qat['post_training']}: "
                          f"`lowformer validate` scores both")
    for line in getattr(result, "errors", ()):
        error_line(line)
    for step in result.next_steps:
        next_step_line(step)


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


def print_engine(entry: Dict[str, Any]) -> None:
    """One line of what `build-engine` wrote, then its warnings."""
    b = entry["build"]
    console.print(f"wrote {entry['path']}: {entry['precision']}, batch {b['min_batch']}..{b['max_batch']}, "
                  f"TensorRT {entry['tensorrt']} on {entry['gpu']} (sm {entry['compute_capability']}), "
                  f"sha256 {entry['sha256'][:12]}", highlight=False, soft_wrap=True)
    for w in entry.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)


def print_sensitivity(report: Dict[str, Any]) -> None:
    """`calibrate sensitivity`: one row per block, the most harmful blocks, files, --auto-exclude's search."""
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


# validate (--explain)


def print_validation(result) -> None:
    """The parity table of `validate`, then one error line per failed gate."""
    d = result.data
    print_table(f"{d['images']} images, labels: {d['label_source']}", result.COLUMNS, result.rows())
    for g in getattr(result, "distillation", ()):
        lo, hi = g["top1_gain_ci"]
        console.print(f"{g['artifact']} (distilled, {g['steps']} steps) vs {g['post_training']} (post-training): "
                      f"top-1 {g['top1_gain']:+.2f} pt, 95% interval [{lo:+.2f}, {hi:+.2f}], McNemar p {g['mcnemar_p']:.3g}",
                      highlight=False, soft_wrap=True)
    for a in result.artifacts:
        for f in a.failures:
            error_line(f"{a.name}: {f}")


def print_explain(ex) -> None:
    """`validate --explain`: per artifact, its block outputs against the reference and the findings."""
    for a in ex.artifacts:
        print_table(f"{a.name}: block outputs vs the reference, {a.images} images "
                    f"({a.precision}, SQNR floor {a.tolerance.get('sqnr_db'):g} dB)", a.COLUMNS, a.rows())
        for line in a.findings():
            console.print(Text.assemble((f"{a.name}:", "bold"), " ", line), highlight=False, soft_wrap=True)


# bench, demo, train, report


def print_bench(report) -> None:
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


def print_sweep(report) -> None:
    """`sweep`: one row per cell (figures, the node and ISA that timed it, attempts), then the files."""
    def figure(c: Dict[str, Any], key: str, spec: str) -> str:
        return format(c[key], spec) if c.get("status") == "ok" and c.get(key) is not None else "-"

    print_table(f"sweep on {report.where}: {len(report.cells)} cell(s), {len(report.failed)} failed",
                ["model", "format", "batch", "median ms", "images/s", "node (ISA)", "attempts", "status"],
                [(c["model"], c["format"], c["batch_size"], figure(c, "median_ms", ".2f"),
                  figure(c, "images_per_s", ".1f"),
                  f"{c['node']} ({c['isa']})" if c.get("node") else "-", c.get("attempts", "-"),
                  "ok" if c.get("status") == "ok" else c.get("status", "-")) for c in report.cells])
    for path in report.files:
        print_path("results", path)


def print_demo(summary: Dict[str, Any]) -> None:
    print_table("lowformer demo", summary["columns"], summary["rows"])
    for w in summary.get("warnings") or []:  # under the table whose latencies they qualify
        warning_line(w)
    for m in summary["models"]:
        if m["next_step"]:
            console.print(f"[bold]TensorRT ({m['name']}):[/bold] {m['next_step']}", highlight=False, soft_wrap=True)
    console.print(f"report: {summary['report']} and {summary['report_html']}", highlight=False, soft_wrap=True)


def print_trained(summary: Dict[str, Any]) -> None:
    final = summary["final"]
    result = f"top-1 {final['top1']:.2f}% on {final['n']} images" if final else "no --val-data"
    console.print(f"[bold]{summary['model']}[/bold]: {summary['epochs']} epochs, {summary['steps']} steps, "
                  f"{summary['seconds']:.0f} s; {result}; best.pt: {summary['best']['path']}", highlight=False,
                  soft_wrap=True)


def print_path(what: str, path: Any) -> None:
    console.print(f"{what}: {path}", highlight=False, soft_wrap=True)


# profile


def _ms(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def summary_table(reports: Sequence[ProfileReport]) -> Table:
    t = Table(title="Profile summary (ms per call; latency from a separate un-instrumented run)")
    t.add_column("artifact", justify="left", min_width=24, ratio=3)
    for c in ("backend", "prec.", "batch", "latency", "p90", "profiled run", "layers", "coverage", "unattributed"):
        t.add_column(c, justify="right")
    for r in reports:
        s = r.summary()
        t.add_row(r.label, {"onnxruntime": "ORT"}.get(r.backend, r.backend), r.precision, str(r.batch_size),
                  _ms(r.latency.get("median_ms")),
                  _ms(r.latency.get("p90_ms")), _ms(r.profiled_run_ms), _ms(s["layer_total_ms"]),
                  f"{s['coverage']:.1%}", _ms(s["unattributed_ms"]))
    return t


def top_table(report: ProfileReport, by: str = "layer", top: int = 15) -> Table:
    groups = report.group(by)
    t = Table(title=f"{report.label}: top {min(top, len(groups))} of {len(groups)} by {by}")
    t.add_column("#", justify="right")
    t.add_column(by if by != "layer" else "module", justify="left")
    if by in ("layer", "block"):
        t.add_column("kind", justify="left")
    for c in ("ms", "share", "nodes"):
        t.add_column(c, justify="right")
    t.add_column("", justify="left")
    for i, g in enumerate(groups[:top], 1):
        bar = "█" * max(1, round(g.share * 30)) if g.share > 0 else ""
        cells = [str(i), g.key] + ([g.kind] if by in ("layer", "block") else []) + \
                [f"{g.ms:.3f}", f"{g.share:.1%}", str(g.layers), bar]
        t.add_row(*cells)
    return t


def share_table(reports: Sequence[ProfileReport], by: str) -> Table:
    """One column per artifact: ms and share of each stage (or kind)."""
    from lowformer.profiling.report import group_order

    keys: List[str] = group_order(by, sorted({g.key for r in reports for g in r.group(by)}))
    t = Table(title=f"Time per {by} (ms, share of profiled layer time)")
    t.add_column(by, justify="left")
    for r in reports:
        t.add_column(r.label, justify="right")
    for k in keys:
        cells = [k]
        for r in reports:
            g = next((g for g in r.group(by) if g.key == k), None)
            cells.append(f"{g.ms:.3f} ({g.share:.0%})" if g else "-")
        t.add_row(*cells)
    return t


def fused_note(report: ProfileReport) -> str:
    fused = report.fused_rows()
    if not fused:
        return ""
    layers = len({r.name for r in fused})
    return (f"{report.label}: {layers} fused engine layers; their time is split over the ONNX nodes "
            f"they were fused from (rows marked fused-split)")


def print_reports(console, reports: Sequence[ProfileReport], group_by: str = "layer", top: int = 15) -> None:
    """Everything a person reads: summary, top-N per artifact, stage and kind shares, notes."""
    console.print(summary_table(reports))
    for r in reports:
        console.print(top_table(r, group_by, top))
    for by in ("stage", "kind"):
        if by != group_by or len(reports) > 1:
            console.print(share_table(reports, by))
    for r in reports:
        for note in [fused_note(r)] + list(dict.fromkeys(r.warnings)):
            if note:
                console.print(f"[yellow]note:[/yellow] {r.label}: {note}" if not note.startswith(r.label) else
                              f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
