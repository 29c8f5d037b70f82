"""Rich tables of profile reports: a summary, the top layers (or blocks...), and stage/kind shares
side by side so that FP32, FP16 and INT8 artifacts compare at a glance."""
from __future__ import annotations

from typing import List, Sequence

from rich.table import Table

from lowformer.profiling.report import ProfileReport, group_order


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
