"""One stacked bar per artifact, split by stage or kind, with its end-to-end latency marked."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lowformer.core.files import atomic_path
from lowformer.profiling.report import ProfileReport, group_order
from lowformer.profiling.structure import UNATTRIBUTED


def plot_reports(reports: Sequence[ProfileReport], path: str, by: str = "stage") -> Path:
    """Write a PNG: per artifact, profiled ms per call stacked by `by` ('stage' or 'kind'); a black
    marker and dashed line mark the un-instrumented median latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = by if by in ("stage", "kind") else "stage"
    keys = group_order(by, sorted({g.key for r in reports for g in r.group(by)}))
    cmap = plt.get_cmap("tab10" if len(keys) <= 10 else "tab20")
    colors = {k: ("#bbbbbb" if k == UNATTRIBUTED else cmap(i % cmap.N)) for i, k in enumerate(keys)}
    height = max(2.8, 0.9 * len(reports) + 1.8)
    fig, ax = plt.subplots(figsize=(12, height), dpi=110)
    ys = list(range(len(reports)))[::-1]
    xmax = max([max(r.layer_total_ms, r.latency.get("median_ms") or 0) for r in reports] + [1e-3])
    seen = set()
    ticks = []
    for y, r in zip(ys, reports):
        groups = {g.key: g.ms for g in r.group(by)}
        left = 0.0
        for k in keys:
            v = groups.get(k, 0.0)
            if v <= 0:
                continue
            ax.barh(y, v, left=left, color=colors[k], edgecolor="white", linewidth=0.6,
                    label=None if k in seen else k)
            seen.add(k)
            if v / xmax > 0.06:  # label only segments wide enough to hold it
                ax.text(left + v / 2, y, f"{v:.1f}", ha="center", va="center", fontsize=8)
            left += v
        med = r.latency.get("median_ms")
        if med:  # a thin line through the bar and a marker above it, clear of the segment labels
            ax.plot([med, med], [y - 0.4, y + 0.4], color="black", linewidth=1.0, linestyle=(0, (2, 2)))
            ax.plot([med], [y + 0.47], marker="v", color="black", markersize=7, clip_on=False)
        facts = f"{left:.2f} ms profiled" + (f" · {med:.2f} ms latency" if med else "") + \
            f" · {r.coverage:.0%} attributed"
        ticks.append(f"{r.label}\n{facts}")
    ax.set_yticks(ys)
    ax.set_yticklabels(ticks, fontsize=8.5)
    ax.set_xlabel("ms per call (bars: profiled per-layer time; ▼ and dashed line: un-instrumented median latency)")
    ax.set_xlim(0, xmax * 1.05)
    handles, names = ax.get_legend_handles_labels()
    uniq = dict(zip(names, handles))
    ax.legend([uniq[k] for k in keys if k in uniq], [k for k in keys if k in uniq], title=by,
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=9, frameon=False)
    batch = {r.batch_size for r in reports}
    ax.set_title(f"Per-layer time by {by}" + (f", batch {batch.pop()}" if len(batch) == 1 else ""), fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
