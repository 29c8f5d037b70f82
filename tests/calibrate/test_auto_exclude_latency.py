"""Latency-aware --auto-exclude: per-block latency from ONNX Runtime profiles, harm-per-ms ranking,
the search (greedy, prune, cheaper harm-order prefixes) and the table of what it tried."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from conftest import FIXTURES
from lowformer.core.blocks import blocks_in_order
from lowformer.calibrate.data import split_eval_and_calibration
from lowformer.calibrate.latency import UNATTRIBUTED, measure_block_latency
from lowformer.calibrate.search import (MIN_COST_MS, harm_per_ms_order, harm_per_ms_table, search_exclusion)
from lowformer.calibrate.sensitivity import EvalData, auto_exclude_blocks, block_sensitivity
from lowformer.calibrate.session import calibrated
from lowformer.data.preprocess import lowformer_protocol
from lowformer.data.synthetic import generate_images
from lowformer.export.onnx_export import export_onnx
from lowformer.models.factory import create_from_reference_config
from lowformer.models.fusion import fuse

SIZE = 128


# --------------------------------------------------------------------------- ranking (pure)


def _row(block, cosine, agreement=1.0):
    return {"block": block, "cosine": cosine, "agreement": agreement, "drop": 0.0}


def test_ranking_is_harm_per_ms_of_float_cost_not_harm_alone():
    rows = [_row("a", 0.990), _row("b", 0.996), _row("c", 0.998), _row("d", 1.0)]
    cost = {"a": 10.0, "b": 1.0, "c": -0.5, "d": 0.2}  # c: INT8 no faster than FP32 (negative saving)
    table = harm_per_ms_table(rows, cost)
    # a: 0.010 / 10 ms = 0.001; b: 0.004 / 1 ms = 0.004; c: 0.002 / floor; d: no harm at all.
    assert [t["block"] for t in table] == ["c", "b", "a", "d"]
    assert table[0]["float_cost_ms"] == MIN_COST_MS and table[0]["harm_per_ms"] == pytest.approx(0.002 / MIN_COST_MS)
    assert table[2]["harm_per_ms"] == pytest.approx(0.001) and table[3]["harm_per_ms"] == 0.0
    # A block without a measured cost gets the floor; equal harm per ms: more harm first, then lower agreement.
    assert harm_per_ms_order([_row("x", 0.99), _row("y", 0.995)], {"y": 0.5}) == ["x", "y"]
    tie = [_row("p", 0.99, 0.9), _row("q", 0.98, 0.9), _row("r", 0.99, 0.8)]
    assert harm_per_ms_order(tie, {"p": 1.0, "q": 2.0, "r": 1.0}) == ["q", "r", "p"]


def test_per_node_medians_come_from_each_profiled_run():
    from lowformer.engines.onnxruntime.runner import OrtProfile, node_ms_by_run, parse_ort_profile

    def node(name, ts, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": "Conv"}}
    runs = [{"cat": "Session", "name": "model_run", "ts": t, "dur": 900} for t in (0, 1000, 2000)]
    events = runs + [node("/a/Conv", 10, 100), node("/b/Conv", 200, 300),   # run 0
                     node("/a/Conv", 1010, 500), node("/b/Conv", 1200, 300),  # run 1 (a slow once)
                     node("/a/Conv", 2010, 120), node("/b/Conv", 2200, 300)]  # run 2
    per_run = node_ms_by_run(events, 3)
    assert per_run == [{"/a/Conv": 0.1, "/b/Conv": 0.3}, {"/a/Conv": 0.5, "/b/Conv": 0.3},
                       {"/a/Conv": 0.12, "/b/Conv": 0.3}]
    timings, run_ms = parse_ort_profile(events, 3)
    medians = OrtProfile(timings, run_ms, per_run=per_run).median_node_ms()
    assert medians == pytest.approx({"/a/Conv": 0.12, "/b/Conv": 0.3})  # the mean would be 0.24


# --------------------------------------------------------------------------- search (pure)
# An additive accuracy model written down by the test: the drop with `kept` in float is the
# all-INT8 drop minus what each kept block gives back.


def _additive(full_drop, gain):
    calls = []

    def evaluate(kept):
        calls.append(tuple(kept))
        drop = round(full_drop - sum(gain[b] for b in kept), 6)
        return {"drop": drop, "agreement": 1 - drop / 100, "cosine": 1.0}
    return evaluate, calls


def _estimate(cost, kept, base=5.0):
    return base + sum(cost[b] for b in kept)


def test_search_finds_a_cheaper_passing_set_than_the_harm_order():
    gain = {"big": 3.0, "m1": 1.2, "m2": 1.1, "m3": 1.0, "s": 0.1}
    cost = {"big": 9.0, "m1": 1.0, "m2": 1.0, "m3": 1.0, "s": 0.5}
    harm = ["big", "m1", "m2", "m3", "s"]  # most harmful first
    ranking = ["m1", "m2", "s", "m3", "big"]  # most harm per ms first
    gate = 1.0
    evaluate, calls = _additive(4.0, gain)
    found = search_exclusion(evaluate, gate, ranking, harm, cost, base_ms=5.0, max_steps=5,
                             initial=evaluate([]))
    plain = search_exclusion(_additive(4.0, gain)[0], gate, harm, harm, None, max_steps=5)
    assert plain.chosen == ["big"]  # the old answer: 1 block, but the slowest one
    assert found.chosen is not None and sorted(found.chosen) == ["m1", "m2", "m3"]
    assert 4.0 - sum(gain[b] for b in found.chosen) <= gate
    assert _estimate(cost, found.chosen) < _estimate(cost, plain.chosen)
    # Pruned: the greedy set had `s` too, which the gate does not need.
    assert found.greedy[-1] == ["m1", "m2", "s", "m3"] and "s" not in found.chosen
    for b in found.chosen:
        assert 4.0 - sum(gain[x] for x in found.chosen if x != b) > gate
    # One row per evaluated candidate, none evaluated twice; estimates are INT8 + float costs.
    assert len(found.tried) == len(calls) == len(set(map(frozenset, calls)))
    assert found.tried[0]["phase"] == "int8" and found.tried[0]["kept_float"] == []
    for t in found.tried:
        assert t["estimated_ms"] == pytest.approx(_estimate(cost, t["kept_float"]))
        assert t["passed"] == (t["drop"] <= gate)
    assert {"greedy", "prune"} <= {t["phase"] for t in found.tried}


def test_search_falls_back_to_the_harm_order_when_cheap_blocks_do_not_help():
    gain = {"big": 3.5, "s1": 0.1, "s2": 0.1}
    cost = {"big": 4.0, "s1": 0.2, "s2": 0.2}
    evaluate, _ = _additive(4.0, gain)
    found = search_exclusion(evaluate, 1.0, ["s1", "s2", "big"], ["big", "s1", "s2"], cost, max_steps=2,
                             initial=evaluate([]))
    # The cheap-first greedy never reaches `big` within 2 steps; the harm-order prefix does.
    assert found.chosen == ["big"] and any(t["phase"] == "harm-order" and t["passed"] for t in found.tried)


def test_search_without_a_passing_set_and_within_its_budget():
    gain = {"a": 0.5, "b": 0.5, "c": 0.5}
    cost = {"a": 1.0, "b": 1.0, "c": 1.0}
    evaluate, calls = _additive(4.0, gain)
    found = search_exclusion(evaluate, 1.0, ["a", "b", "c"], ["c", "b", "a"], cost, max_steps=3)
    assert found.chosen is None and found.greedy[-1] == ["a", "b", "c"]
    capped, calls = _additive(4.0, gain)
    few = search_exclusion(capped, 1.0, ["a", "b", "c"], ["c", "b", "a"], cost, max_steps=3, max_evals=2)
    assert len(calls) == 2 and few.chosen is None and "budget" in few.stopped


# --------------------------------------------------------------------------- a real model


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """The mini LowFormer's layout (stem, stages with attention, head) with random weights (its
    near-even logits make INT8 flip some top-1s, so blocks must stay in float), BN fused, as FP32
    ONNX at 128 px (at 64 px INT8 is no faster than FP32 for most blocks on ORT's CPU); and images."""
    folder = tmp_path_factory.mktemp("mini")
    with safe_open(str(FIXTURES / "mini" / "mini_b1.safetensors"), "pt") as f:
        meta = f.metadata()
    torch.manual_seed(0)
    model = create_from_reference_config(meta["config"], json.loads(meta["head_widths"]), int(meta["n_classes"]))
    fuse(model.eval())
    export_onnx(model, folder / "model.onnx", SIZE)
    images = generate_images(folder / "images", count=40, size=SIZE + 16, classes=4)
    return folder / "model.onnx", images


@pytest.fixture(scope="module")
def measured(mini, tmp_path_factory):
    """Calibrated once: the sensitivity rows, the per-block latency table and two searches."""
    src, images = mini
    pp = lowformer_protocol(SIZE)
    calib, ev = split_eval_and_calibration(str(images), 16, None, 24)
    tmp = tmp_path_factory.mktemp("mini-int8")
    with calibrated(src, calib, pp, "mini_b1", tmp / "cache") as session:
        data = EvalData.build(src, ev, pp)
        rows = block_sensitivity(session, data, "percentile", "cpu")
        session.quantize(tmp / "int8.onnx", "percentile", "cpu", [])
        order = blocks_in_order(session.node_names)
        lat = measure_block_latency(session.prepared, tmp / "int8.onnx", session.node_names, order, "cpu")
        # The gate: the best drop of every candidate an impossible gate makes the search try (three
        # harm-per-ms prefixes, three harm-order prefixes), so some set within the search's reach meets it.
        probe = auto_exclude_blocks(session, data, "percentile", "cpu", [], -1.0, rows=rows, max_steps=3,
                                    latency=lat)
        gate = min(t["drop"] for t in probe["tried"] if t["kept_float"])
        plain = auto_exclude_blocks(session, data, "percentile", "cpu", [], gate, rows=rows, max_steps=3,
                                    latency_aware=False, latency=lat)
        aware = auto_exclude_blocks(session, data, "percentile", "cpu", [], gate, rows=rows, max_steps=3,
                                    latency=lat)
    return dict(rows=rows, lat=lat, order=order, probe=probe, gate=gate, plain=plain, aware=aware)


def test_block_latency_table_covers_the_blocks_and_sums_to_the_model(measured):
    lat, order = measured["lat"], measured["order"]
    rows = lat.rows()
    assert [r["block"] for r in rows if r["block"] != UNATTRIBUTED] == order
    for prof in (lat.fp32, lat.int8):
        assert prof.placed_by.get("none", 0) == 0  # every profiled node found its block
        assert prof.kernel_blocks.get(UNATTRIBUTED, 0.0) == 0.0
        assert set(prof.kernel_blocks) == set(order)
        assert all(v > 0 for v in prof.kernel_blocks.values())
        assert sum(prof.kernel_blocks.values()) == pytest.approx(prof.kernel_ms)
        assert sum(prof.blocks.values()) == pytest.approx(prof.latency_ms)
    cost = lat.float_cost
    assert set(cost) == set(order) and min(cost.values()) >= MIN_COST_MS
    assert lat.estimate([]) == pytest.approx(lat.int8.latency_ms)
    assert lat.estimate(order) == pytest.approx(lat.int8_ms + sum(cost.values()))
    assert lat.source == "onnxruntime-cpu" and lat.to_dict()["floor_ms"] == MIN_COST_MS


def test_latency_aware_auto_exclude_meets_the_gate_no_slower_than_the_harm_order(measured):
    aware, plain, lat, gate = measured["aware"], measured["plain"], measured["lat"], measured["gate"]
    assert gate < measured["probe"]["initial"]["drop"], "the inputs should need blocks in float"
    assert aware["passed"] and aware["final"]["drop"] <= gate
    assert aware["ranking"] == harm_per_ms_order(measured["rows"], lat.float_cost)
    assert aware["search"] == "latency-aware" and plain["ranking"] == aware["harm_ranking"]
    if plain["passed"]:  # the plain harm-order answer, when it has one, is never faster
        assert lat.estimate(aware["kept_float"]) <= lat.estimate(plain["kept_float"]) + 1e-9
    assert aware["estimated_ms"] == pytest.approx(lat.estimate(aware["kept_float"]), abs=1e-3)
    m = aware["measured_ms"]
    assert m["chosen"] > 0 and m["int8"] > 0 and m["fp32"] > 0 and m["source"] == "onnxruntime-cpu"
    assert aware["latency_source"] == "onnxruntime-cpu" and aware["latency"]["blocks"]


def test_auto_exclude_result_has_the_tried_table_and_the_old_keys(measured):
    aware = measured["aware"]
    for key in ("gate_top1_drop", "metric", "eval", "initial", "kept_float", "steps", "final", "passed", "ranking"):
        assert key in aware, key
    tried = aware["tried"]
    assert tried[0]["phase"] == "int8" and tried[0]["kept_float"] == [] and not tried[0]["passed"]
    assert len({frozenset(t["kept_float"]) for t in tried}) == len(tried)
    for t in tried:
        assert set(t) >= {"kept_float", "drop", "agreement", "cosine", "estimated_ms", "passed"}
        assert t["passed"] == (t["drop"] <= aware["gate_top1_drop"])
    chosen = next(t for t in tried if sorted(t["kept_float"]) == sorted(aware["kept_float"]))
    assert chosen["passed"] and chosen["estimated_ms"] == min(t["estimated_ms"] for t in tried if t["passed"])
    assert [s["kept_float"] for s in aware["steps"]] == [aware["ranking"][:i + 1] for i in range(len(aware["steps"]))]
    assert "in float" in aware["conclusion"] and "measured" in aware["conclusion"]
    json.dumps(aware)  # the manifest and --json carry it as is


def test_cli_prints_the_tried_table_and_the_conclusion(measured):
    from lowformer.commands import render

    with render.console.capture() as captured:
        render.print_auto_exclude(measured["aware"])
    text = captured.get()
    assert "candidates tried" in text and "(all INT8)" in text and "onnxruntime-cpu" in text
    assert "holds" in text and measured["aware"]["conclusion"].split(":")[0] in text.replace("\n", " ")
