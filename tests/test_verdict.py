"""One verdict per artifact: the rules, and the demo chain agreeing with itself everywhere it reports."""
from __future__ import annotations

import json

import pytest

from helpers import manifest_dict
from lowformer.verdict import EXPORT_CHECK, FAIL, PASS, UNDECIDED, VALIDATION, decide


def test_rules():
    ok = {"passed": True, "failures": [], "error": None}
    bad = {"passed": False, "failures": ["top-1 agreement 98.44% < 99.5%"], "error": None}
    assert decide("fp16", True, bad, real_labels=True).status == FAIL
    assert decide("fp16", True, bad, real_labels=True).decided_by == VALIDATION
    assert "98.44%" in decide("fp16", True, bad, real_labels=True).reason
    # generated images: the accuracy gates do not apply; the export check decides FP32/FP16 ...
    assert (decide("fp16", True, bad, real_labels=False).status, decide("fp16", True, bad, False).decided_by) == \
        (PASS, EXPORT_CHECK)
    # ... and INT8 is not decided, with the reason said
    v = decide("int8", True, bad, real_labels=False)
    assert v.status == UNDECIDED and v.decided_by is None and "not measurable" in v.reason
    assert decide("int8", False, ok, real_labels=True).status == FAIL  # a failed export check always fails
    assert decide("fp32", True, ok, real_labels=True) .status == PASS
    assert decide("fp32", True, {"error": "RuntimeError: boom"}, real_labels=False).status == FAIL


@pytest.mark.heavy
def test_demo_chain_agrees_in_report_summary_manifest_and_exit_code(tmp_path):
    from lowformer.demo import run_demo

    out = tmp_path / "demo"
    summary = run_demo(str(out), image_size=64, limit=16, calib_size=16)
    on_disk = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    cols = summary["columns"]
    assert "top-1 %" not in cols  # generated images: no empty top-1 columns
    rows = {(r[0], r[1]): dict(zip(cols, r)) for r in summary["rows"]}
    for m in on_disk["models"]:
        manifest = {a["path"]: a for a in manifest_dict(out / m["name"].replace("timm:", ""))["artifacts"]}
        for art, v in m["verdicts"].items():
            row = rows[(m["name"], art)]
            assert row["verdict"] == v["status"] and row["decided by"] == (v["decided_by"] or "-")
            assert f"| {m['name']} | {art} |" in report and f"| {v['status']} | {v['decided_by'] or '-'} |" in report
            entry = manifest[art]
            again = decide(entry["precision"], entry["parity"]["passed"], entry.get("validation"), False)
            assert again.status == v["status"] and again.decided_by == v["decided_by"], (art, again, v)
            if entry["precision"] == "int8" and entry["parity"]["passed"]:
                assert v["status"] == UNDECIDED and "not measurable" in report
    failed = any(v["status"] == FAIL for m in on_disk["models"] for v in m["verdicts"].values())
    assert summary["passed"] == on_disk["passed"] == (not failed)
