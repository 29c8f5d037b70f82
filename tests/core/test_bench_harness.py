"""lowformer.core.harness: workers in their own processes, interleaved rounds, one-line failures; and the
benchmark report built from its figures (benchmarks/run.py)."""
from __future__ import annotations

import sys

import pytest

from conftest import REPO
from lowformer.core import harness

BENCHMARKS = REPO / "benchmarks"
SLEEP = "lowformer.core.harness:sleep_job"


def test_interleaved_workers_time_known_durations_per_batch_size():
    jobs = [("short", SLEEP, {"ms": 2.0}), ("long", SLEEP, {"ms": 6.0})]
    seen = []
    done = harness.interleaved(jobs, [1, 2], rounds=3, seconds={1: 0.06, 2: 0.06}, max_calls=50,
                               on_round=lambda key, bs, r, samples: seen.append((key, bs, r)))
    assert done["short"]["facts"] == {"backend": "sleep", "ms": 2.0}
    for key, ms in (("short", 2.0), ("long", 6.0)):
        for bs in (1, 2):
            stats = harness.combine(harness.wall_rounds(done[key][bs]))
            assert stats["rounds"] == 3 and stats["n"] >= 3
            assert ms * bs <= stats["median_ms"] < ms * bs + 5.0, (key, bs, stats)
            assert len(stats["round_medians_ms"]) == 3 and isinstance(stats["unsteady"], bool)
    # Rounds alternate between the workers (the start rotates), batch size by batch size.
    assert [k for k, bs, r in seen if bs == 1] == ["short", "long", "long", "short", "short", "long"]
    assert seen.index(("short", 2, 0)) > seen.index(("long", 1, 2))


def test_a_fixed_number_of_calls_is_split_exactly_over_the_rounds():
    done = harness.interleaved([("a", SLEEP, {"ms": 0.5})], [1], rounds=4, seconds={}, max_calls=1000, calls=10,
                               warmup=0)
    assert [len(r["wall_ms"]) for r in done["a"][1]] == [3, 3, 2, 2]
    done = harness.interleaved([("a", SLEEP, {"ms": 0.5})], [1], rounds=5, seconds={}, max_calls=1000, calls=2)
    assert [len(r["wall_ms"]) for r in done["a"][1]] == [1, 1]  # never a round without a call


def test_copies_of_a_job_time_each_round_together():
    done = harness.interleaved([("x", SLEEP, {"ms": 30.0})], [1], rounds=2, seconds={}, max_calls=100, calls=4,
                               warmup=0, copies=2)
    rounds = done["x"][1]
    assert all(len(r["per_copy"]) == 2 and len(r["wall_ms"]) == 4 for r in rounds)
    for copy in (0, 1):
        assert sum(len(r) for r in harness.wall_rounds(rounds, copy)) == 4
    assert all(29.0 <= v < 80.0 for r in rounds for v in r["wall_ms"])


def test_a_failing_worker_is_one_line_and_the_others_still_run():
    jobs = [("bad", "lowformer.core.harness:no_such_job", {}), ("ok", SLEEP, {"ms": 1.0})]
    done = harness.interleaved(jobs, [1], rounds=2, seconds={1: 0.02}, max_calls=10)
    assert isinstance(done["bad"], harness.JobFailed)
    assert str(done["bad"]).startswith("AttributeError:") and "\n" not in str(done["bad"])
    assert done["bad"].user_error() is None  # not a LowformerError: a failure, not a refusal to pass on
    assert len(done["ok"][1]) == 2


def test_a_workers_lowformer_error_is_passed_on_as_it_was_raised(tmp_path):
    from lowformer.core.errors import LowformerError

    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx model")
    done = harness.interleaved([("bad", "lowformer.bench.workers:open_artifact", {"path": str(bad)})], [1],
                               rounds=1, seconds={1: 0.01}, max_calls=1)
    err = done["bad"].user_error()
    assert isinstance(err, LowformerError) and "model.onnx" in str(err), done["bad"]


@pytest.mark.parametrize("medians, drifted", [([10, 10.2, 9.9, 10.1], False), ([10, 10, 14, 14], True),
                                              ([10, 10, 10, 10, 10, 30], False)])
def test_drift_is_the_middle_half_of_the_round_medians(medians, drifted):
    stats = harness.combine([[m, m] for m in medians])
    assert stats["round_medians_ms"] == [float(m) for m in medians]
    assert stats["unsteady"] is drifted
    assert (harness.drift_note(stats) is not None) is drifted  # one slow round alone is not drift


def test_a_job_is_timed_only_at_the_batch_sizes_it_needs():
    jobs = [("both", SLEEP, {"ms": 1.0}), ("only16", SLEEP, {"ms": 1.0})]
    seen = []
    done = harness.interleaved(jobs, [1, 16], rounds=2, seconds={1: 0.01, 16: 0.01}, max_calls=5,
                               on_round=lambda key, bs, r, samples: seen.append((key, bs)),
                               needs={"both": [1, 16], "only16": [16]})
    assert ("only16", 1) not in seen and 1 not in done["only16"]
    assert len(done["only16"][16]) == 2 and len(done["both"][1]) == len(done["both"][16]) == 2


def test_report_only_rewrites_each_isas_table_from_its_own_json(tmp_path):
    import shutil

    sys.path.insert(0, str(BENCHMARKS))
    import run

    src = BENCHMARKS / "results-avx-512-vnni-amx.json"
    shutil.copy(src, tmp_path / src.name)
    assert run.main(["--report-only", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS-avx-512-vnni-amx.md").read_text()
    assert "from `results-avx-512-vnni-amx.json`" in text and "amx_int8" in text
    assert "timed alone in a fresh process" in text  # recorded before the interleaved harness: said so
    assert run.results_name("AVX-512 VNNI + BF16") == "results-avx-512-vnni-bf16.json"


def test_the_report_names_only_the_worst_drifted_cells_worst_first(tmp_path):
    import json
    import re
    import shutil

    sys.path.insert(0, str(BENCHMARKS))
    import run

    src = BENCHMARKS / "results-avx-512-vnni-bf16.json"
    shutil.copy(src, tmp_path / src.name)
    assert run.main(["--report-only", "--out", str(tmp_path)]) == 0
    line = next(x for x in (tmp_path / "RESULTS-avx-512-vnni-bf16.md").read_text().splitlines()
                if "round medians are more than" in x)
    spreads = [float(s) for s in re.findall(r" b\d+ (\d+\.\d+)x", line)]
    every = sorted((c["round_spread"] for c in json.loads(src.read_text())["cells"].values()
                    if c.get("warning")), reverse=True)
    assert len(every) > run.DRIFT_LISTED and f"{len(every)} of " in line
    assert spreads == [round(s, 2) for s in every[:run.DRIFT_LISTED]]


def test_the_checked_in_tables_are_what_report_only_writes_from_the_json(tmp_path):
    """The JSON keeps every figure its table shows: regenerating the table from it changes nothing."""
    import shutil

    sys.path.insert(0, str(BENCHMARKS))
    import run

    for src in sorted(BENCHMARKS.glob("results-*.json")):
        shutil.copy(src, tmp_path / src.name)
    assert run.main(["--report-only", "--out", str(tmp_path)]) == 0
    for md in sorted(tmp_path.glob("RESULTS-*.md")):
        assert md.read_text() == (BENCHMARKS / md.name).read_text(), md.name
