import json

import pytest

from helpers import run_cli
from lowformer import create_model, resolve
from lowformer.models.complexity import count_macs


@pytest.mark.parametrize("variant", ["b0", "b1", "b15", "b3"])
def test_macs_match_published_within_2_percent(variant):
    published = resolve(variant).published.macs_m * 1e6
    assert abs(count_macs(create_model(variant)) - published) / published < 0.02


def test_info_json_reports_stage_shapes():
    result = run_cli("info", "b0", "--image-size", "200", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    shapes = {r["module"]: r["shape"] for r in data["stages"]}
    assert shapes["stem"] == [1, 16, 100, 100]
    assert shapes["stages.3"] == [1, 256, 7, 7]  # 200 -> 100 -> 50 -> 25 -> 13 -> 7
    assert shapes["logits"] == [1, 1000] and data["checkpoint"] == "random-init"


def test_models_json_lists_every_variant():
    result = run_cli("models", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"b0", "b1", "b15", "b2", "b3", "e1", "e2", "e3"}
    assert rows["b1"]["published"]["top1"] == 79.9 and not rows["b2"]["has_weights"]
