"""Typed configs (lowformer.core.config, issue #30): flat keywords reach the right nested config, an
unknown keyword is one LowformerError naming it, the old keywords of every public function still work,
and no public function takes more than 8 parameters (the AST rule below keeps that true)."""
from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from conftest import REPO
from lowformer.bench.config import BenchConfig
from lowformer.calibrate.config import CalibrationConfig
from lowformer.calibrate.search import SearchConfig, search_exclusion
from lowformer.calibrate.sensitivity import AutoExcludeConfig
from lowformer.core.config import Config
from lowformer.core.errors import LowformerError
from lowformer.core.harness_config import HarnessConfig
from lowformer.engines.config import RunConfig
from lowformer.engines.tensorrt.config import TrtBuildConfig
from lowformer.evaluate.config import DataConfig, ReferenceConfig
from lowformer.explain import ExplainConfig
from lowformer.export.config import ExportConfig
from lowformer.profiling.config import ProfileConfig
from lowformer.report import ChartStyle, bar_chart
from lowformer.sweep.config import ClusterConfig, SweepConfig
from lowformer.validate import GateConfig, ValidateConfig

MAX_PARAMETERS = 8
# the configs of issue #30, each field documented in its docstring
DOCUMENTED = [RunConfig, DataConfig, ReferenceConfig, GateConfig, ValidateConfig, ExplainConfig, BenchConfig,
              ProfileConfig, HarnessConfig, TrtBuildConfig, AutoExcludeConfig, SearchConfig, ChartStyle, ExportConfig,
              CalibrationConfig, SweepConfig, ClusterConfig]
CONFIGS = DOCUMENTED


# --------------------------------------------------------------------------- the parameter rule

def _parameter_count(node: ast.AST) -> int:
    """Parameters of a def, `self`/`cls` not counted (as /tmp/params.py of issue #30 counts them)."""
    a = node.args  # type: ignore[attr-defined]
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (1 if a.vararg else 0) + (1 if a.kwarg else 0)
    if a.args and a.args[0].arg in ("self", "cls"):
        n -= 1
    return n


def _exempt(path: Path, name: str) -> bool:
    """The peer models' constructors mirror the official architectures' hyper-parameters (like timm's)."""
    return name == "__init__" and path.is_relative_to(REPO / "lowformer" / "models" / "peers")


def test_no_function_takes_more_than_eight_parameters():
    too_many = []
    for path in sorted((REPO / "lowformer").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = _parameter_count(node)
                if n > MAX_PARAMETERS and not _exempt(path, node.name):
                    too_many.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} parameters)")
    assert not too_many, "take a typed config (lowformer.core.config) instead:\n" + "\n".join(too_many)


def test_the_rule_sees_long_signatures():
    tree = ast.parse("def f(a, b, c, d, e, f, g, h, i): pass\nclass C:\n    def m(self, a, *b, c, **d): pass\n")
    counts = [_parameter_count(n) for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert counts == [9, 4]


# --------------------------------------------------------------------------- the configs themselves

@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_is_frozen_documented_and_round_trips(cls):
    assert issubclass(cls, Config) and dataclasses.is_dataclass(cls)
    assert cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
    doc = cls.__doc__ or ""
    undocumented = [f.name for f in dataclasses.fields(cls) if f"`{f.name}`" not in doc]
    assert not undocumented, f"{cls.__name__}'s docstring does not say what {undocumented} mean"
    config = cls()
    assert cls.build(config.to_dict()) == config
    assert cls.build(config) == config


@pytest.mark.parametrize("cls", [c for c in CONFIGS if any(
    isinstance(t, type) and issubclass(t, Config) for t in typing.get_type_hints(c).values())], ids=lambda c: c.__name__)
def test_a_name_means_one_thing_in_a_composed_config(cls):
    """Flat keywords are routed by name: no two parts of a config may have a field of the same name."""
    hints = typing.get_type_hints(cls)
    seen = {f.name: cls.__name__ for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if isinstance(t, type) and issubclass(t, Config):
            for g in dataclasses.fields(t):
                assert g.name not in seen, f"{g.name} is in {seen[g.name]} and in {t.__name__}"
                seen[g.name] = t.__name__


def test_flat_keywords_reach_the_nested_configs():
    c = ValidateConfig.build(limit=100, runtimes="openvino", precisions=["bf16"], gate_agreement=0.5,
                             reference="b1", checkpoint="w.pt", verify="full", device="cuda", record=False,
                             mean=[0.5, 0.5, 0.5])
    assert c.images.limit == 100 and c.images.mean == (0.5, 0.5, 0.5)
    assert c.run == RunConfig(device="cuda", runtimes=("openvino",), precisions=("bf16",))
    assert c.gate == GateConfig(gate_agreement=0.5)
    assert c.ref == ReferenceConfig("b1", "w.pt", "full") and c.ref.full
    assert c.record is False
    assert BenchConfig.build(threads=2, latency=True).run.threads == 2
    assert ProfileConfig.build(device="cuda", iterations=3).run.device == "cuda"


def test_nested_configs_are_given_whole_or_as_mappings_and_kept_on_rebuild():
    images = DataConfig(limit=8, workers=0)
    c = ValidateConfig.build(images=images, run={"threads": 1})
    assert c.images.limit == 8 and c.images.workers == 0 and c.run.threads == 1
    again = ValidateConfig.build(c, seed=3)  # a config plus keywords: the keywords change, the rest stays
    assert again.images == images.replace(seed=3, batch_size=50) and again.run.threads == 1
    assert ValidateConfig.build(again.to_dict()) == again


def test_each_command_keeps_its_own_default_batch_size():
    assert DataConfig().batch_size is None  # the command's own
    assert ValidateConfig().images.batch_size == 50 and ExplainConfig().images.batch_size == 25
    assert ExplainConfig.build(batch_size=8).images.batch_size == 8


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_an_unknown_keyword_is_one_error_naming_it(cls):
    with pytest.raises(LowformerError, match="unknown option 'no_such_option'"):
        cls.build(no_such_option=1)


def test_the_public_functions_refuse_an_unknown_keyword_before_any_work(tmp_path):
    from lowformer.bench import bench
    from lowformer.core.harness import interleaved
    from lowformer.engines.tensorrt import build_engine, next_step_command, plan_build
    from lowformer.evaluate import resolve_reference
    from lowformer.explain import explain, prepare_explain
    from lowformer.profiling import profile
    from lowformer.targets import resolve_targets
    from lowformer.validate import validate

    calls = [lambda: validate(["nowhere"], tmp_path, limt=3), lambda: explain(["nowhere"], tmp_path, limt=3),
             lambda: prepare_explain(["nowhere"], tmp_path, limt=3), lambda: bench(["b1"], iteration=3),
             lambda: profile(["b1"], iteration=3), lambda: resolve_targets(["b1"], thread=2),
             lambda: interleaved([("a", "nowhere:f", {})], [1], rounds=1, copys=2),
             lambda: build_engine(tmp_path / "model.onnx", fp61=True),
             lambda: next_step_command("model.onnx", fp61=True), lambda: plan_build(None, 10, fp61=True),
             lambda: resolve_reference([], limt=3),
             lambda: search_exclusion(lambda kept: {}, 1.0, [], [], max_step=2),
             lambda: bar_chart("t", [], [], "ms", hilight="x")]
    for call in calls:
        with pytest.raises(LowformerError, match="unknown option '(limt|iteration|thread|copys|fp61|max_step|hilight)'"):
            call()


# --------------------------------------------------------------------------- the old keywords still work

def test_trt_build_settings_as_keywords_or_as_a_config():
    from lowformer.engines.tensorrt import next_step_command

    settings = TrtBuildConfig(int8=True, min_batch=1, opt_batch=8, max_batch=32, workspace_mb=4096)
    expected = ("lowformer build-engine 'my dir/model.onnx' --out out/x.engine --int8 --opt-batch 8 "
                "--max-batch 32 --workspace-mb 4096")
    assert next_step_command("my dir/model.onnx", settings, "out/x.engine") == expected
    assert next_step_command("my dir/model.onnx", engine_path="out/x.engine", **settings.to_dict()) == expected
    assert next_step_command("a.onnx", workspace_mb=None) == "lowformer build-engine a.onnx"
    assert TrtBuildConfig(max_batch=4).resolved(None) == TrtBuildConfig(min_batch=1, opt_batch=1, max_batch=4)
    assert TrtBuildConfig().resolved(2) == TrtBuildConfig(min_batch=2, opt_batch=2, max_batch=2)
    assert TrtBuildConfig.build(ExportConfig.build(trt_build={"max_batch": 8, "min_batch": None}).trt_build) == \
        TrtBuildConfig(max_batch=8)  # ExportConfig.trt_build holds the same fields


def test_plan_build_takes_the_settings_or_their_keywords():
    from lowformer.engines.tensorrt import OnnxFacts, plan_build

    facts = OnnxFacts("input", [None, 3, 8, 8], "fp16")
    plan = plan_build(facts, 10, max_batch=4)
    assert plan == plan_build(facts, 10, TrtBuildConfig(min_batch=1, opt_batch=1, max_batch=4))
    assert plan.profile == ((1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8))


def test_bar_chart_style_as_keywords_or_as_a_config():
    args = ("SQNR", ["stem", "head"], [30.0, 10.0], "dB", "{:.1f}")
    with_keywords = bar_chart(*args, highlight="head", threshold=20.0, threshold_label="tolerance 20 dB")
    assert with_keywords == bar_chart(*args, ChartStyle("head", threshold=20.0, threshold_label="tolerance 20 dB"))
    assert 'stroke-dasharray' in with_keywords and "#d93025" in with_keywords


def test_search_budget_as_keywords_or_as_a_config():
    def evaluate(kept):
        drop = 3.0 - len(kept)
        return {"drop": drop, "agreement": 1.0, "cosine": 1.0}

    a = search_exclusion(evaluate, 0.5, ["a", "b", "c"], ["a", "b", "c"], None, max_steps=2)
    b = search_exclusion(evaluate, 0.5, ["a", "b", "c"], ["a", "b", "c"], None, config=SearchConfig(max_steps=2))
    assert a == b and a.chosen is None and a.greedy == [["a"], ["a", "b"]]


def test_resolve_targets_takes_a_run_config_or_its_keywords():
    from lowformer.targets import resolve_targets

    (t,) = resolve_targets(["b1"], 160, None, threads=2)
    (u,) = resolve_targets(["b1"], 160, None, RunConfig(threads=2))
    assert t == u and (t.kind, t.image_size, t.device, t.threads) == ("model", 160, "cpu", 2)


def test_harness_rounds_positionally_or_in_the_config():
    from lowformer.core import harness

    sleep = "lowformer.core.harness:sleep_job"
    a = harness.interleaved([("a", sleep, {"ms": 0.1})], [1], 2, {}, 100, calls=4, warmup=0)
    b = harness.interleaved([("a", sleep, {"ms": 0.1})], [1], config=HarnessConfig(rounds=2, calls=4, warmup=0))
    assert [len(r["wall_ms"]) for r in a["a"][1]] == [len(r["wall_ms"]) for r in b["a"][1]] == [2, 2]
