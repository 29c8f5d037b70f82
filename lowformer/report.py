"""`lowformer report DIR...`: one self-contained `report.html` from export folders' manifests.

Everything shown is read from the manifests: what the commands recorded there (export parity,
`validate` with its flipped images, `validate --explain` per-block divergence, `profile` per-block
times, `bench` timings, each with the ISA and date it was measured on). Nothing is measured here and
nothing is invented: a figure that was not recorded is a "-" or a sentence saying which command
fills it. The page needs no network: CSS is inline, charts are inline SVG, thumbnails are base64
JPEG `data:` URIs, and every text is HTML-escaped.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from lowformer.artifacts import ArtifactEntry, Manifest, ValidationRecord
from lowformer.core.config import Config
from lowformer.core.errors import LowformerError
from lowformer.core.files import PathLike, atomic_path
from lowformer.verdict import IMAGENET_CLASSES, folder_order_labels

log = logging.getLogger(__name__)

THUMBNAIL_PX = 96


def _explainable(fmt: str) -> bool:
    """Whether `validate --explain` takes an artifact of this format apart (its backend says)."""
    from lowformer.engines import registry

    try:
        return registry.owner(fmt).can_explain
    except LowformerError:
        return False

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d1d1f;max-width:1400px}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{margin:1.2em 0 .4em;font-size:1.05em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ddd;padding:3px 7px}
th{background:#f3f3f5;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.reference td{color:#555;font-style:italic}.pass{color:#137333}.fail{color:#b3261e;font-weight:600}
.note{color:#555;font-size:.9em}code{background:#f3f3f5;padding:0 3px;border-radius:3px}
small{color:#666}.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure.flip{margin:0;border:1px solid #ddd;border-radius:4px;padding:6px;width:200px;font-size:.8em}
figure.flip img{display:block;margin:0 auto 4px auto;max-width:96px;max-height:96px}
figure.flip .missing{width:96px;height:96px;margin:0 auto 4px auto;background:#eee;color:#777;
 display:flex;align-items:center;justify-content:center;text-align:center;font-size:.8em}
#artifact-table{font-size:.78em;width:100%}#artifact-table th,#artifact-table td{padding:2px 4px}
#artifact-table td.wrap{overflow-wrap:anywhere}#artifact-table td.latency{min-width:8.5em}td.verdict{min-width:8em}
.scroll{overflow-x:auto}svg.chart{display:block;margin:.3em 0 1em 0}svg.chart text{font-size:11px;font-family:inherit}
"""


# ---------------------------------------------------------------------------------------------- data


@dataclass
class FolderData:
    """One export folder as the report sees it: its manifest, read and checked."""

    folder: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.display_name


@dataclass
class ReportData:
    folders: List[FolderData]
    created: str
    notes: List[str] = field(default_factory=list)

    def artifacts(self) -> Iterable[Tuple[FolderData, ArtifactEntry]]:
        for f in self.folders:
            for e in f.manifest.artifacts:
                yield f, e

    def summary(self) -> Dict[str, Any]:
        """What the page holds, in numbers (the CLI's --json)."""
        arts = list(self.artifacts())
        return {"folders": [str(f.folder) for f in self.folders], "artifacts": len(arts),
                "validated": sum(1 for _, e in arts if e.validation is not None),
                "flipped_images": sum(len(e.validation.flipped_images) for _, e in arts if e.validation),
                "divergence_charts": sum(1 for _, e in arts if _explain_blocks(e)),
                "latency_records": sum(len(e.latencies()) for _, e in arts),
                "profile_charts": sum(len(e.profiles()) for _, e in arts),
                "notes": list(self.notes)}


def collect(folders: Sequence[PathLike]) -> ReportData:
    """Read every folder's manifest (a missing or corrupt one is one LowformerError naming it)."""
    if not folders:
        raise LowformerError("name at least one export folder (a folder with a manifest.json)")
    out: List[FolderData] = []
    notes: List[str] = []
    for raw in folders:
        p = Path(raw)
        if not p.exists():
            raise LowformerError(f"no such folder: {p}")
        folder = p if p.is_dir() else p.parent
        manifest = Manifest.load(p)
        # the page shows what was recorded of these very files: verified as validate does (a changed
        # file is one error line); a missing one is left out, said in a note
        missing = manifest.verify(folder, skip_missing=True)
        out.append(FolderData(folder.resolve(), manifest))
        notes += [f"{folder.resolve()}: {m}" for m in missing]
    data = ReportData(out, _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    data.notes.extend(notes)
    for f in out:
        if not f.manifest.artifacts:
            data.notes.append(f"{f.folder}: the manifest lists no artifacts")
    return data


# ---------------------------------------------------------------------------------------------- helpers


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, pattern: str = "{:.2f}") -> str:
    if value is None or isinstance(value, bool):
        return "-"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "∞" if v > 0 else "-∞"
    return pattern.format(v)


def _size(n: Optional[int]) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _day(date: Any) -> str:
    return str(date)[:10] if date else "date not recorded"


def _known(value: Any) -> Any:
    """A recorded figure, or '?' where the manifest has none."""
    return "?" if value is None else value


def _explain_blocks(entry: ArtifactEntry) -> List[Dict[str, Any]]:
    ex = entry.explanation()
    return ex.charted_blocks() if ex is not None else []


class ClassNames:
    """Class index -> name: ImageNet-1k descriptions for 1000-class models, else the index."""

    def __init__(self, num_classes: int):
        self.info = None
        if num_classes == IMAGENET_CLASSES:
            try:
                from timm.data import ImageNetInfo

                self.info = ImageNetInfo()
            except Exception as e:  # names are a nicety: indices still say it
                log.info("ImageNet class names unavailable (%s): showing indices", e)

    def predicted(self, index: Any) -> Tuple[str, str]:
        """(short name, full description) of a model output."""
        try:
            i = int(index)
        except (TypeError, ValueError):
            return "?", "?"
        if self.info is not None and 0 <= i < IMAGENET_CLASSES:
            full = self.info.index_to_description(i)
            return f"{full.split(',')[0]} ({i})", full
        return f"class {i}", f"class {i}"

    def true(self, label: Any, path: str, label_source: Optional[str]) -> Tuple[str, str]:
        """The image's true class: the folder name when the labels are folder order (not ImageNet)."""
        if (label_source or "").startswith("sorted folder order"):
            folder = Path(path).parent.name
            return f"{folder} (label {label})", f"class folder {folder}, label {label} ({label_source})"
        if label_source == "none" or label is None or (isinstance(label, int) and label < 0):
            return "unlabelled", "the image has no label"
        return self.predicted(label)


class Thumbnails:
    """Base64 JPEG thumbnails, decoded with the data loader's safety (pixel cap, JPEG draft)."""

    def __init__(self, size: int = THUMBNAIL_PX):
        self.size = size
        self.cache: Dict[str, Optional[str]] = {}

    def data_uri(self, path: str) -> Optional[str]:
        if path not in self.cache:
            self.cache[path] = self._make(path)
        return self.cache[path]

    def _make(self, path: str) -> Optional[str]:
        from lowformer.data.imagenet import load_rgb

        if not os.path.isfile(path):
            return None
        try:
            img = load_rgb(path, resize=self.size)
            img.thumbnail((self.size, self.size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=80)
        except Exception as e:  # an unreadable image is a grey box with a reason, not a failed report
            log.info("no thumbnail for %s: %s", path, e)
            return None
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------------------------------------- SVG


@dataclass(frozen=True)
class ChartStyle(Config):
    """What a `bar_chart` marks: `highlight`, the label whose bar is drawn red (e.g. the first
    diverging block); `css_class`, the svg element's class; `threshold`, a dashed vertical line at that
    value (e.g. the tolerance; None: none), labelled `threshold_label`."""

    highlight: Optional[str] = None
    css_class: str = "chart"
    threshold: Optional[float] = None
    threshold_label: str = ""


def bar_chart(title: str, labels: Sequence[str], values: Sequence[Optional[float]], unit: str,
              pattern: str = "{:.3f}", style: Optional[ChartStyle] = None, **fields: Any) -> str:
    """A horizontal bar chart as inline SVG (no script, no external resource); None/inf/NaN values get
    no bar and their text ("-", "∞"); bars start at zero (negative values: no bar). `style`: a
    ChartStyle, or its fields as keywords (highlight, css_class, threshold: a dashed vertical line,
    e.g. the tolerance, labelled threshold_label)."""
    style = ChartStyle.build(style, **fields)
    highlight, css_class, threshold, threshold_label = (style.highlight, style.css_class, style.threshold,
                                                        style.threshold_label)
    label_w, bar_w, row_h = 170, 420, 16
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    line = float(threshold) if threshold is not None and math.isfinite(float(threshold)) else None
    top = 38 if line is not None else 22  # the threshold's label gets its own line under the title
    vmax = max([v for v in finite if v > 0] + ([line] if line and line > 0 else []) + [1e-12])
    height = top + row_h * len(labels) + 8
    width = label_w + bar_w + 90
    parts = [f'<svg class="{_e(css_class)}" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f"<title>{_e(title)}</title>",
             f'<text x="0" y="14" font-weight="600">{_e(title)}</text>']
    for i, (label, v) in enumerate(zip(labels, values)):
        y = top + i * row_h
        colour = "#d93025" if highlight is not None and label == highlight else "#4a78c2"
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{_e(label)}</text>')
        fv = float(v) if v is not None else float("nan")
        w = bar_w * fv / vmax if math.isfinite(fv) and fv > 0 else 0.0
        if math.isinf(fv) and fv > 0:
            w = bar_w
        if w > 0:
            parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" fill="{colour}">'
                         f"<title>{_e(label)}: {_e(_num(v, pattern))} {_e(unit)}</title></rect>")
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 12}">{_e(_num(v, pattern))} {_e(unit)}</text>')
    if line is not None and line > 0:
        x = label_w + bar_w * line / vmax
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 4}" stroke="#d93025" '
                     f'stroke-dasharray="4 3"/><text x="{x + 3:.1f}" y="{top - 6}" fill="#d93025">'
                     f"{_e(threshold_label)}</text>")
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------- sections


def _gate_applies(v: ValidationRecord, labelled: bool) -> bool:
    """Whether the record's accuracy gates decide: labelled images, and not recorded as not applied."""
    return labelled and v.passed is not None and (v.gate or {}).get("applied") is not False


def _validation_cells(v: Optional[ValidationRecord], labelled: bool = True) -> List[Tuple[str, str]]:
    """(text, css class) cells: images, top-1, delta [CI], agreement, McNemar p, logit cosine, flips, gate.
    `labelled` False (folder-order labels, lowformer.verdict.folder_order_labels): no top-1, delta or
    McNemar p (n/a), and the gates are not applied, whatever an older record says."""
    if v is None:
        return [("not validated", "note")] + [("-", "num")] * 7
    if v.error:
        return [(f"error: {v.error}", "fail")] + [("-", "num")] * 7
    ci = v.top1_delta_ci
    delta = _num(v.top1_delta, "{:+.2f}")
    if ci and len(ci) == 2:
        delta += f" [{_num(ci[0], '{:+.2f}')}, {_num(ci[1], '{:+.2f}')}]"
    if not _gate_applies(v, labelled):
        gate = ("not applied: labels are folder order" if not labelled else "not applied", "note")
    else:
        gate = ("pass", "pass") if v.passed else ("FAIL: " + "; ".join(v.failures or []), "fail")
    na = ("n/a", "num note")
    return [(str(v.images), "num"), (_num(v.top1), "num") if labelled else na, (delta, "num") if labelled else na,
            (_num(v.agreement * 100 if v.agreement is not None else None) + (" %" if v.agreement is not None else ""),
             "num"), (_num(v.mcnemar_p, "{:.3g}"), "num") if labelled else na, (_num(v.cosine, "{:.6f}"), "num"),
            (str(v.flipped), "num"), gate]


def _latency_cell(entry: ArtifactEntry) -> str:
    runs = entry.latencies()
    if not runs:
        return '<span class="note">not benchmarked</span>'
    lines = []
    for key, r in sorted(runs.items()):
        lines.append(f"<b>{_e(_num(r.median_ms, '{:.3f}'))} ms</b> {_e(key)} "
                     f"<small>({_e(r.isa or 'ISA not recorded')}, {_e(_day(r.date))})</small>")
    return "<br>".join(lines)


ARTIFACT_COLUMNS = ["model", "artifact", "format", "precision", "size", "export check cosine", "images",
                    "top-1 %", "Δ top-1 pt [95% CI]", "agreement", "McNemar p", "logit cosine", "flips",
                    "validation gate", "verdict", "latency (median, per runtime / precision / batch)"]


def _verdict_cell(f: FolderData, e: ArtifactEntry, v: Optional[ValidationRecord]) -> str:
    """lowformer.verdict's one verdict, from the file's export check and this validation (as the demo
    decides)."""
    from lowformer.verdict import artifact_verdict

    verdict = artifact_verdict(f.manifest, e, v)  # v None only for an entry without a validation
    cls = {"pass": "pass", "fail": "fail"}.get(verdict.status, "note")
    return (f'<td class="verdict {cls}" title="{_e(verdict.reason)}">{_e(verdict)}'
            f"<br><small>{_e(verdict.reason)}</small></td>")


def _validation_runs(data: ReportData, f: FolderData, e: ArtifactEntry,
                     ) -> List[Tuple[str, Optional[ValidationRecord]]]:
    """(label, record): the artifact's own validation, then its runs in other runtimes / precisions
    (`validate --runtime openvino --precision bf16` keeps those beside it)."""
    def unreadable(key: str, err: LowformerError) -> None:
        note = f"{f.folder}/{e.path}: validation {key} unreadable ({err})"
        if note not in data.notes:
            data.notes.append(note)

    runs: List[Tuple[str, Optional[ValidationRecord]]] = [(e.path, e.validation)]
    runs += [(f"{e.path} via {key}", v) for key, v in sorted(e.validation_runs(unreadable).items())]
    return runs


def _artifact_table(data: ReportData) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in ARTIFACT_COLUMNS)
    rows = []
    for f in data.folders:
        validations = [e.validation for e in f.manifest.artifacts if e.validation is not None]
        if validations:
            v = validations[0]
            ref_top1 = _num(v.reference_top1) if not folder_order_labels(f.manifest, v) else "n/a"
            rows.append(f'<tr class="reference"><td>{_e(f.name)}</td><td>PyTorch reference</td><td>eager</td>'
                        f'<td>fp32</td><td class="num">-</td><td class="num">-</td>'
                        f'<td class="num">{_e(v.images)}</td><td class="num">{_e(ref_top1)}</td>'
                        + '<td class="num">-</td>' * 6 + "<td>-</td><td>-</td></tr>")
        for e in f.manifest.artifacts:
            for i, (label, v) in enumerate(_validation_runs(data, f, e)):
                parity = e.parity.cosine if e.parity is not None and i == 0 else None
                labelled = not folder_order_labels(f.manifest, v)
                cells = "".join(f'<td class="{cls}">{_e(text)}</td>' for text, cls in _validation_cells(v, labelled))
                rows.append(f'<tr class="artifact" data-artifact="{_e(label)}"><td class="wrap">{_e(f.name)}</td>'
                            f'<td><code>{_e(label)}</code></td><td>{_e(e.format)}</td>'
                            f"<td>{_e(e.precision)}</td>"
                            f'<td class="num">{_e(_size(e.size) if i == 0 else "")}</td>'
                            f'<td class="num">{_e(_num(parity, "{:.6f}"))}</td>{cells}'
                            f"{_verdict_cell(f, e, v)}"
                            f'<td class="wrap latency">{_latency_cell(e) if i == 0 else ""}</td></tr>')
    if not rows:
        return '<p class="note">No artifacts in these folders.</p>'
    unlabelled = sorted({f.name for f in data.folders for e in f.manifest.artifacts
                         if folder_order_labels(f.manifest, e.validation)})
    note = (f'<p class="note" id="labels-note">{_e(", ".join(unlabelled))}: validated on images whose labels are '
            "class-folder order, not ImageNet classes: top-1, Δ top-1 and McNemar p measure nothing there (n/a) "
            "and the accuracy gates are not applied (the export check decides FP32 and FP16; INT8 stays not "
            "decided); "
            "agreement, the flipped images and logit cosine still compare the artifact with its reference.</p>"
            if unlabelled else "")
    return (f'<div class="scroll"><table id="artifact-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>' + note)


LATENCY_COLUMNS = ["model", "artifact", "runtime / precision / batch", "median ms", "p10 ms", "p90 ms", "threads",
                   "jobs", "ISA", "CPU", "GPU", "date", "warnings"]


def _latency_table(data: ReportData) -> str:
    rows = []
    for f, e in data.artifacts():
        for key, r in sorted(e.latencies().items()):
            cells = [(f.name, ""), (e.path, ""), (key, ""), (_num(r.median_ms, "{:.3f}"), "num"),
                     (_num(r.p10_ms, "{:.3f}"), "num"), (_num(r.p90_ms, "{:.3f}"), "num"),
                     (r.threads if r.threads is not None else "runtime default", "num"),
                     (r.jobs, "num"), (r.isa or "not recorded", ""), (r.cpu or "-", ""),
                     (r.gpu or "-", ""), (r.date or "not recorded", ""),
                     ("; ".join(r.warnings or []) or "-", "note")]
            rows.append('<tr class="latency">' + "".join(f'<td class="{c}">{_e(t)}</td>' for t, c in cells) + "</tr>")
    if not rows:
        return ('<p class="note">No timings recorded: run <code>lowformer bench DIR --latency</code> '
                "(it records each artifact's timing in its manifest).</p>")
    head = "".join(f"<th>{_e(c)}</th>" for c in LATENCY_COLUMNS)
    return (f'<div class="scroll"><table id="latency-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _distillation_section(data: ReportData) -> str:
    """Each distilled INT8 artifact (`export --qat-steps`): how it was trained and, once validated, its
    top-1 gain over the post-training model kept beside it (paired interval on the same images)."""
    rows = []
    for f, e in data.artifacts():
        qat = e.int8.get("qat") or {}
        if not qat.get("steps"):
            continue
        curve = qat.get("loss_curve") or []
        loss = f"{curve[0][1]:.4f} → {curve[-1][1]:.4f}" if curve else "-"
        g = qat.get("validated_gain")
        gain = (f"{g['top1_gain']:+.2f} pt [{g['top1_gain_ci'][0]:+.2f}, {g['top1_gain_ci'][1]:+.2f}], "
                f"McNemar p {g['mcnemar_p']:.3g}, {g['images']} images" if g else
                "not validated yet: lowformer validate FOLDER --data DIR scores both")
        cells = [f.name, e.path, qat.get("post_training", "-"), f"{qat['steps']} x {qat.get('batch_size')}",
                 f"{qat.get('images')}", f"{qat.get('seconds', 0):.0f} s", loss, gain]
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    if not rows:
        return '<p class="note">No distilled INT8 artifacts (<code>export --int8 --qat-steps N</code>).</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in ("model", "artifact", "post-training baseline", "steps x batch",
                                                  "images", "time", "KL first → last", "top-1 gain (95% CI)"))
    return (f'<div class="scroll"><table id="distillation-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _divergence_section(data: ReportData) -> str:
    parts, missing = [], []
    for f, e in data.artifacts():
        ex = e.explanation()
        blocks = ex.charted_blocks() if ex is not None else []
        if ex is None or not blocks:
            missing.append((f, e))
            continue
        first = ex.first_diverging
        tol = ex.sqnr_floor
        title = f"{f.name} {e.path}: SQNR per block (dB, higher is closer to the reference)"
        labels = [str(b.get("block", "?")) for b in blocks]
        parts.append(f'<div class="divergence" data-artifact="{_e(e.path)}"><h3>{_e(f.name)} <code>{_e(e.path)}</code>'
                     f"</h3>" + bar_chart(title, labels, [b.get("sqnr_db") for b in blocks], "dB", "{:.1f}",
                                          highlight=first, threshold=tol,
                                          threshold_label=f"tolerance {_num(tol, '{:g}')} dB" if tol else "")
                     + f'<p class="note">First diverging block: {_e(first or "none")}; '
                     f"{_e(_known(ex.images))} images, {_e(_day(ex.date))}; "
                     f"matched {_e(_known(ex.matched))} of {_e(_known(ex.total))} blocks."
                     + (f" Suggested to keep in float: {_e(', '.join(map(str, ex.suggested_exclude)))}."
                        if ex.suggested_exclude and e.precision == "int8" else "") + "</p></div>")
    fillable = [(f, e) for f, e in missing if _explainable(e.format)]
    if fillable:
        listed = ", ".join(f"{f.name} {e.path}" for f, e in fillable)
        dirs = " ".join(sorted({str(f.folder) for f, _ in fillable}))
        parts.append(f'<p class="note" id="divergence-missing">No per-block divergence recorded for {_e(listed)}: '
                     f"run <code>lowformer validate {_e(dirs)} --data ... --explain</code> to fill it.</p>")
    other = [(f, e) for f, e in missing if not _explainable(e.format)]
    if other:
        parts.append('<p class="note" id="divergence-unavailable">Not explained block by block (<code>validate '
                     "--explain</code> does not take these formats apart): " + _e(", ".join(f"{f.name} {e.path} ({e.format})" for f, e in other))
                     + ".</p>")
    return "".join(parts)


def _profile_section(data: ReportData) -> str:
    by_backend: Dict[str, List[str]] = {}
    for f, e in data.artifacts():
        for key, r in sorted(e.profiles().items()):
            blocks = [b for b in r.blocks or [] if isinstance(b, dict)]
            if not blocks:
                continue
            backend = str(r.backend or key.split("/")[0])
            title = f"{f.name} {e.path} ({key}): ms per call per block"
            chart = bar_chart(title, [str(b.get("key", "?")) for b in blocks], [b.get("ms") for b in blocks], "ms")
            note = (f"Layer total {_num(r.total_ms, '{:.3f}')} ms, un-instrumented median "
                    f"{_num(r.latency_median_ms, '{:.3f}')} ms, attribution coverage "
                    f"{_num((r.coverage or 0) * 100, '{:.0f}')} %; batch {_known(r.batch)}, "
                    f"threads {r.threads if r.threads is not None else 'runtime default'}, "
                    f"{r.isa or 'ISA not recorded'}" + (f", GPU {r.gpu}" if r.gpu else "")
                    + f", {_day(r.date)}.")
            by_backend.setdefault(backend, []).append(
                f'<div class="profile" data-artifact="{_e(e.path)}" data-key="{_e(key)}">{chart}'
                f'<p class="note">{_e(note)}</p></div>')
    if not by_backend:
        return ('<p class="note">No per-block profile recorded: run <code>lowformer profile DIR</code> '
                "(it records each artifact's per-block times in its manifest).</p>")
    return "".join(f'<h3 class="backend">{_e(b)}</h3>' + "".join(charts) for b, charts in sorted(by_backend.items()))


def _gallery(data: ReportData) -> str:
    thumbs = Thumbnails()
    parts = []
    for f, e, label, v in ((f, e, label, v) for f, e in data.artifacts()
                           for label, v in _validation_runs(data, f, e)):
        if v is None or not v.flipped_images:
            continue
        names = ClassNames(f.manifest.num_classes)
        cards = []
        for flip in v.flipped_images:
            if not isinstance(flip, dict):
                continue
            path = str(flip.get("path", ""))
            uri = thumbs.data_uri(path)
            true_short, true_full = names.true(flip.get("label"), path, v.label_source)
            ref_short, ref_full = names.predicted(flip.get("reference"))
            art_short, art_full = names.predicted(flip.get("artifact"))
            img = (f'<img src="{uri}" alt="{_e(Path(path).name)}" title="{_e(path)}">' if uri else
                   f'<div class="missing" title="{_e(path)}">image not readable here</div>')
            cards.append(
                f'<figure class="flip">{img}<figcaption><div class="name">{_e(Path(path).name)}</div>'
                f'<div class="true" title="{_e(true_full)}">true: {_e(true_short)}</div>'
                f'<div class="ref" title="{_e(ref_full)}">reference: {_e(ref_short)} '
                f'<b>{_e(_num(flip.get("reference_prob"), "{:.1%}"))}</b></div>'
                f'<div class="art" title="{_e(art_full)}">{_e(label)}: {_e(art_short)} '
                f'<b>{_e(_num(flip.get("artifact_prob"), "{:.1%}"))}</b></div></figcaption></figure>')
        more = (f'<p class="note">{v.flipped - len(cards)} more flipped images are not kept in the manifest.</p>'
                if v.flipped > len(cards) else "")
        parts.append(f'<div class="flips" data-artifact="{_e(label)}"><h3>{_e(f.name)} <code>{_e(label)}</code>: '
                     f"{v.flipped} of {v.images} images flipped ({_e(_day(v.date))}, data {_e(v.data)})</h3>"
                     f'<div class="gallery">{"".join(cards)}</div>{more}</div>')
    if not parts:
        validated = any(e.validation is not None or e.validation_runs(lambda key, err: None)
                        for _, e in data.artifacts())
        return ('<p class="note" id="no-flips">' + ("No artifact changed the reference's top-1 class on any "
                "validated image." if validated else "Not validated: run <code>lowformer validate DIR --data "
                "IMAGES</code>.") + "</p>")
    return "".join(parts)


def _machine_section(data: ReportData) -> str:
    from lowformer.core.machine import cpu_flags, cpu_isa, cpu_model, tool_versions

    flags = cpu_flags()
    rows = [("CPU", cpu_model()), ("ISA", cpu_isa(flags)), ("ISA flags", " ".join(flags) or "-"),
            ("cores", os.cpu_count())]
    gpus = _gpus()
    rows.append(("GPU", ", ".join(gpus) if gpus else "none (torch sees no CUDA device)"))
    import platform

    rows += [("platform", platform.platform()), ("python", platform.python_version())]
    rows += [(name, version) for name, version in tool_versions().items()]
    measured = sorted({(r.isa or "ISA not recorded", r.cpu or "")
                       for _, e in data.artifacts() for runs in (e.latencies(), e.profiles())
                       for r in runs.values()})
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    seen = ("".join(f"<li>{_e(isa)}{(' — ' + _e(cpu)) if cpu else ''}</li>" for isa, cpu in measured)
            if measured else "<li>no timings recorded</li>")
    tools = "".join(f"<li>{_e(f.name)}: exported with " + _e(", ".join(f"{k} {v}" for k, v in f.manifest.tools.items())
                    or "versions not recorded") + "</li>" for f in data.folders)
    return (f'<table id="machine-table"><tbody>{body}</tbody></table>'
            f"<p>Timings in this report were measured on:</p><ul>{seen}</ul>"
            f"<p>Artifacts:</p><ul>{tools}</ul>")


def _gpus() -> List[str]:
    try:
        import torch

        if torch.cuda.is_available():
            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no torch CUDA runtime: no GPU to show
        pass
    return []


def render_html(data: ReportData) -> str:
    """The whole page, one string."""
    models = ", ".join(sorted({f.name for f in data.folders}))
    weights = "".join(
        f"<li><code>{_e(f.folder)}</code>: {_e(f.name)}, input {_e(f.manifest.input_shape)}, "
        + ("<b>random weights</b> (parity is meaningful, accuracy is not)" if f.manifest.random_weights else
           f"checkpoint {_e(f.manifest.checkpoint.get('path') or f.manifest.checkpoint.get('source') or '?')}")
        + f", exported {_e(_day(f.manifest.created))}</li>" for f in data.folders)
    sections = [
        ("artifacts", "Artifacts", _artifact_table(data)
         + '<p class="note">Δ top-1 is the artifact minus the PyTorch reference on the same images, with its paired '
           "bootstrap 95% interval; McNemar p tests the images only one of the two got right; agreement is the "
           "share of images with the reference's top-1 class; logit cosine is the mean per-image cosine.</p>"),
        ("latency", "Latency", _latency_table(data)),
        ("distillation", "Quantization-aware distillation", _distillation_section(data)),
        ("divergence", "Per-block divergence", _divergence_section(data)),
        ("profile", "Per-block latency", _profile_section(data)),
        ("gallery", "Flipped images", _gallery(data)),
        ("machine", "Machine", _machine_section(data)),
    ]
    notes = "".join(f"<li>{_e(n)}</li>" for n in data.notes)
    body = "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{content}</section>' for sid, title, content in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>lowformer report: {_e(models)}</title><style>{_CSS}</style></head><body>"
            f"<h1>lowformer report: {_e(models)}</h1>"
            f'<p class="note">Written {_e(data.created)} from the manifests of:</p><ul>{weights}</ul>'
            + (f'<ul class="notes">{notes}</ul>' if notes else "") + body + "</body></html>\n")


def write_html_report(folders: Sequence[PathLike], out: PathLike = "report.html",
                      data: Optional[ReportData] = None) -> Path:
    """Write one self-contained HTML page about the export folders (atomically); returns its path."""
    data = data or collect(folders)
    page = render_html(data)
    path = Path(out)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path

from lowformer.core.command_module import callable_as_command  # noqa: E402

callable_as_command(__name__)  # `lowformer.report(...)` stays the API function
