"""`lowformer report`: profile and bench record into the manifest; the HTML page is self-contained and,
rendered by a real headless Chromium, shows the artifact table, the gallery of flipped images and the
machine, with the figures the manifest holds."""
from __future__ import annotations

import base64
import io
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest

from helpers import manifest_dict, run_cli
from lowformer.core.machine import cpu_isa

SIZE = 64
PROFILE_KEYS = {"date", "backend", "batch", "isa", "coverage", "total_ms", "blocks", "stages"}
LATENCY_KEYS = {"date", "median_ms", "p10_ms", "p90_ms", "isa", "threads", "warnings"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A real export folder: random LowFormer-B0 at 64 px, FP32 and INT8 ONNX, validated on generated
    images, profiled and benchmarked through the library (which records into the manifest)."""
    from lowformer.bench import bench
    from lowformer.data.synthetic import generate_images
    from lowformer.export.pipeline import export_model
    from lowformer.profiling import profile
    from lowformer.validate import validate

    root = tmp_path_factory.mktemp("report")
    images = str(generate_images(root / "images", count=48, size=72))
    out = root / "b0"
    export_model("b0", to=("onnx",), int8=True, image_size=SIZE, out=str(out), data=images,
                 calib=dict(calib_data=images, calib_size=16, method="minmax", target="cpu"))
    validate([str(out)], images, workers=0, batch_size=16)
    profile([str(out)], iterations=3, warmup=1, image_size=SIZE)
    bench([str(out)], latency=True, iterations=5, warmup=1, image_size=SIZE)
    return out


def _entries(folder: Path) -> Dict[str, dict]:
    return {a["path"]: a for a in manifest_dict(folder)["artifacts"]}


# --------------------------------------------------------------------------- records in the manifest


def test_profile_and_bench_record_into_the_manifest(folder):
    entries = _entries(folder)
    assert set(entries) == {"model.onnx", "model_int8.onnx"}
    for path, precision in (("model.onnx", "fp32"), ("model_int8.onnx", "int8")):
        e = entries[path]
        key = f"onnxruntime/{precision}/b1"
        prof = e["profile"][key]
        assert PROFILE_KEYS <= set(prof), set(prof)
        assert prof["backend"] == "onnxruntime" and prof["batch"] == 1 and prof["isa"] == cpu_isa()
        assert 0.0 < prof["coverage"] <= 1.0
        for group in ("blocks", "stages"):
            rows = prof[group]
            assert rows and all({"key", "ms", "share"} <= set(r) for r in rows)
            assert math.isclose(sum(r["ms"] for r in rows), prof["total_ms"], rel_tol=1e-3, abs_tol=1e-5)
            assert math.isclose(sum(r["share"] for r in rows), 1.0, abs_tol=1e-3)
        keys = [r["key"] for r in prof["blocks"]]
        assert keys.index("stages.2.0") < keys.index("stages.2.1") < keys.index("stages.3.0")  # model order
        lat = e["latency"][key]
        assert LATENCY_KEYS <= set(lat), set(lat)
        assert lat["isa"] == cpu_isa() and lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"]
        assert any("5 timed calls" in w for w in lat["warnings"])  # the reliability warnings travel along


def test_flipped_images_carry_each_sides_probability(folder):
    v = _entries(folder)["model_int8.onnx"]["validation"]
    assert v["flipped_images"], "the INT8 artifact of a random B0 flipped no generated image: the gallery test " \
                                "below needs a flip"
    for flip in v["flipped_images"]:
        for side in ("reference_prob", "artifact_prob"):
            p = flip[side]
            # the probability of the arg-max class is at least 1 / classes and at most 1
            assert 1 / 1000 - 1e-4 <= p <= 1.0, flip
            assert round(p, 4) == p
        assert flip["reference"] != flip["artifact"]


def test_no_record_leaves_the_manifest_alone_and_records_by_default(folder):
    before = (folder / "manifest.json").read_bytes()
    onnx = str(folder / "model.onnx")
    r = run_cli("profile", onnx, "--iterations", "2", "--warmup", "0", "--batch-size", "2", "--no-record")
    assert r.exit_code == 0, r.output
    r = run_cli("bench", onnx, "--iterations", "2", "--warmup", "0", "--batch-size", "2", "--no-record")
    assert r.exit_code == 0, r.output
    assert (folder / "manifest.json").read_bytes() == before
    r = run_cli("bench", onnx, "--iterations", "2", "--warmup", "0", "--batch-size", "2", "--json")
    assert r.exit_code == 0, r.output
    lat = _entries(folder)["model.onnx"]["latency"]
    assert set(lat) == {"onnxruntime/fp32/b1", "onnxruntime/fp32/b2"}
    assert lat["onnxruntime/fp32/b2"]["median_ms"] == json.loads(r.stdout)["results"][0]["median_ms"]


# --------------------------------------------------------------------------- the page


class _Node:
    def __init__(self, tag: str, attrs: Dict[str, Optional[str]], parent: Optional["_Node"]):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], []

    def iter(self):
        yield self
        for c in self.children:
            yield from c.iter()

    def find_all(self, tag: str, **attrs: str) -> List["_Node"]:
        out = []
        for n in self.iter():
            if n.tag != tag:
                continue
            if all((n.attrs.get("class" if k == "cls" else k) or "").split().count(v) if k == "cls"
                   else n.attrs.get(k) == v for k, v in attrs.items()):
                out.append(n)
        return out

    def find(self, tag: str, **attrs: str) -> "_Node":
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag} {attrs}> in the page"
        return found[0]

    def content(self) -> str:
        return " ".join(" ".join(n.text) for n in self.iter()).strip()


class _Dom(HTMLParser):
    """The whole document as a tree of _Node (the standard library's parser; void tags closed)."""

    VOID = {"meta", "img", "br", "hr", "input", "link", "source", "col", "area", "base", "wbr"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = _Node("#document", {}, None)
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        node = _Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in self.VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(_Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.text.append(data)


@pytest.fixture(scope="module")
def page(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page") / "report.html"
    r = run_cli("report", str(folder), "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["report"] == str(out) and summary["artifacts"] == 2
    return out


def test_the_page_is_self_contained(page):
    text = page.read_text()
    dom = _Dom(text).root
    for node in dom.iter():
        for attr in ("src", "href", "srcset", "action", "data", "poster", "xlink:href"):
            value = (node.attrs.get(attr) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "file:")), (node.tag, attr, value[:80])
    assert "http://" not in text and "https://" not in text
    assert not dom.find_all("script") and not dom.find_all("link") and not dom.find_all("iframe")
    imgs = dom.find_all("img")
    assert imgs, "the gallery has no thumbnails"
    from PIL import Image

    for img in imgs:
        prefix = "data:image/jpeg;base64,"
        assert img.attrs["src"].startswith(prefix)
        thumb = Image.open(io.BytesIO(base64.b64decode(img.attrs["src"][len(prefix):])))
        assert thumb.format == "JPEG" and max(thumb.size) <= 96


def _rendered(page: Path) -> _Node:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    run = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.resolve().as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0 and "<html" in run.stdout, run.stderr[-2000:]
    return _Dom(run.stdout).root


def test_chromium_renders_the_tables_the_gallery_and_the_machine(folder, page):
    from timm.data import ImageNetInfo

    entries = _entries(folder)
    dom = _rendered(page)

    # the artifact table: one row per artifact, with the manifest's figures
    table = dom.find("table", id="artifact-table")
    rows = {r.attrs["data-artifact"]: r for r in table.find_all("tr", cls="artifact")}
    assert set(rows) == {"model.onnx", "model_int8.onnx"}
    for path, row in rows.items():
        v = entries[path]["validation"]
        cells = [td.content() for td in row.find_all("td")]
        assert f"{v['agreement'] * 100:.2f} %" in cells and f"{v['cosine']:.6f}" in cells
        assert f"{v['top1']:.2f}" in cells and str(v["flipped"]) in cells
        lo, hi = v["top1_delta_ci"]
        assert f"{v['top1_delta']:+.2f} [{lo:+.2f}, {hi:+.2f}]" in cells
        for key, lat in entries[path]["latency"].items():
            assert f"{lat['median_ms']:.3f} ms" in row.content() and key in row.content()
    # the latency table: every recorded timing with its ISA and date
    lat_rows = dom.find("table", id="latency-table").find_all("tr", cls="latency")
    assert len(lat_rows) == sum(len(e["latency"]) for e in entries.values())
    assert all(cpu_isa() in r.content() for r in lat_rows)

    # the gallery: one card per flipped image kept, thumbnail, true class, both predictions with probabilities
    v = entries["model_int8.onnx"]["validation"]
    gallery = dom.find("div", cls="flips", **{"data-artifact": "model_int8.onnx"})
    cards = gallery.find_all("figure", cls="flip")
    assert len(cards) == len(v["flipped_images"]) > 0
    info = ImageNetInfo()
    for card, flip in zip(cards, v["flipped_images"]):
        assert card.find("img").attrs["src"].startswith("data:image/jpeg;base64,")
        assert Path(flip["path"]).parent.name in card.find("div", cls="true").content()  # folder-order labels
        ref = card.find("div", cls="ref").content()
        art = card.find("div", cls="art").content()
        assert info.index_to_description(flip["reference"]).split(",")[0] in ref
        assert info.index_to_description(flip["artifact"]).split(",")[0] in art
        assert f"{flip['reference_prob']:.1%}" in ref and f"{flip['artifact_prob']:.1%}" in art

    # per-block latency: one chart per recorded profile, under its backend
    charts = dom.find("section", id="profile").find_all("div", cls="profile")
    assert {(c.attrs["data-artifact"], c.attrs["data-key"]) for c in charts} == \
        {(p, k) for p, e in entries.items() for k in e["profile"]}
    assert all(c.find_all("rect") for c in charts)

    # the machine
    machine = dom.find("table", id="machine-table").content()
    assert cpu_isa() in machine and "onnxruntime" in machine and "GPU" in machine


def test_divergence_says_how_to_fill_it_then_charts_the_explain_record(folder, tmp_path):
    before = tmp_path / "before.html"
    assert run_cli("report", str(folder), "--out", str(before)).exit_code == 0
    section = _Dom(before.read_text()).root.find("section", id="divergence")
    assert not section.find_all("svg")
    assert "--explain" in section.content() and str(folder) in section.content()

    from lowformer.explain import explain

    explain([str(folder)], str(folder.parent / "images"), limit=8, workers=0, batch_size=8)
    entries = _entries(folder)
    out = tmp_path / "after.html"
    assert run_cli("report", str(folder), "--out", str(out)).exit_code == 0
    section = _Dom(out.read_text()).root.find("section", id="divergence")
    for path, e in entries.items():
        blocks = e["explain"]["blocks"]
        div = section.find("div", cls="divergence", **{"data-artifact": path})
        svg = div.find("svg")
        assert len(svg.find_all("rect")) == sum(1 for b in blocks if (b["sqnr_db"] or 0) > 0)
        text = svg.content()
        assert all(b["block"] in text for b in blocks)
        assert all(f"{b['sqnr_db']:.1f} dB" in text for b in blocks
                   if b["sqnr_db"] is not None and np.isfinite(b["sqnr_db"]))
    assert "--explain" not in section.content()


def test_bad_folders_are_one_error_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("report", str(empty), "--out", str(tmp_path / "x.html"))
    assert r.exit_code == 1 and "error:" in r.output and "no manifest" in r.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{ not json")
    r = run_cli("report", str(bad), "--out", str(tmp_path / "x.html"))
    assert r.exit_code == 1 and "cannot read manifest" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.html").exists()
