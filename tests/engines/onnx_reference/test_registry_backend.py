"""The backend registry's acceptance test (issue #30): a backend defined here, on ONNX's reference
runtime, enters through one `registry.register` call and every command takes it, with no edit to
lowformer: `export --to onnx-reference`, `validate`, `validate --explain`, `profile` (per node),
`bench` and `report`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import assert_one_line_error, manifest_dict, run_cli
from lowformer.core.errors import LowformerError
from lowformer.data.synthetic import generate_images
from lowformer.engines import registry
from reference_backend import NAME, ReferenceBackend

TINY = "timm:test_efficientnet"  # blocks stem, blocks.0.0 ... blocks.4.0, head
SIZE = 32


@pytest.fixture(scope="module")
def backend():
    registry.register(ReferenceBackend())  # the one registration call
    yield registry.get(NAME)
    registry.unregister(NAME)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return generate_images(tmp_path_factory.mktemp("images") / "val", count=12, size=48, classes=3)


@pytest.fixture(scope="module")
def folder(backend, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "export"
    r = run_cli("export", TINY, "--image-size", str(SIZE), "--to", NAME, "--out", str(out))
    assert r.exit_code == 0, r.output
    return out


def _entry(folder: Path):
    return next(a for a in manifest_dict(folder)["artifacts"] if a["path"] == "model.onnxref")


def test_export_writes_and_checks_the_registered_format(backend, folder):
    e = _entry(folder)
    assert e["format"] == NAME and e["parity"]["passed"], e
    assert e["parity"]["cosine"] > 0.99999  # the reference runtime computes what PyTorch does
    assert (folder / "model.onnx").is_file()  # what it is written from (Backend.export_needs)
    assert NAME in run_cli("export", "--help").output


def test_validate_and_explain_take_it(backend, folder, images):
    r = run_cli("validate", str(folder / "model.onnxref"), "--data", str(images), "--workers", "0", "--explain",
                "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    (art,) = doc["artifacts"]
    assert art["backend"] == NAME and art["agreement"] == 1.0, art
    (ex,) = doc["explain"]["artifacts"]
    assert ex["backend"] == NAME and ex["matched"] == ex["total"] == 7, ex
    assert ex["logits_max_abs_vs_artifact"] < 1e-5  # exposing the boundaries changed nothing
    assert ex["first_diverging"] is None  # fp32 all the way: every block above the 60 dB floor
    recorded = _entry(folder)
    assert recorded["validation"]["images"] == 12 and recorded["explain"]["matched"] == 7


def test_profile_names_every_node_by_block(backend, folder):
    r = run_cli("profile", str(folder / "model.onnxref"), "--iterations", "2", "--warmup", "1")
    assert r.exit_code == 0, r.output
    prof = _entry(folder)["profile"][f"{NAME}/fp32/b1"]
    assert prof["backend"] == NAME and prof["coverage"] > 0.99, prof  # module-scoped node names: all attributed
    blocks = [b["key"] for b in prof["blocks"]]
    assert {f"blocks.{i}.0" for i in range(5)} <= set(blocks), blocks


def test_bench_times_it_in_its_workers(backend, folder):
    r = run_cli("bench", str(folder / "model.onnxref"), "--latency", "--iterations", "3", "--warmup", "1", "--json")
    assert r.exit_code == 0, r.output
    (res,) = json.loads(r.stdout)["results"]
    assert res["backend"] == NAME and res["format"] == NAME and res["median_ms"] > 0, res


def test_report_shows_it(backend, folder, tmp_path):
    run_cli("profile", str(folder / "model.onnxref"), "--iterations", "1", "--warmup", "0")
    page = tmp_path / "report.html"
    r = run_cli("report", str(folder), "--out", str(page))
    assert r.exit_code == 0, r.output
    html = page.read_text()
    assert "model.onnxref" in html and NAME in html


def test_registry_refuses_a_second_owner_of_a_suffix(backend):
    class Clash(ReferenceBackend):
        name = "clash"
        formats = ("clash",)
        export_targets = ()

    with pytest.raises(LowformerError, match="claims .onnxref"):
        registry.register(Clash())
    assert "clash" not in registry.names()


def test_unknown_export_target_is_one_line():
    assert_one_line_error(run_cli("export", TINY, "--to", "no-such-runtime"), "--to")


@pytest.mark.parametrize("value, said", [("[not json", "not a list of backends"),
                                         ('[{"module": "os"}]', "not a list of backends"),
                                         ("no_such_module_xyz:Backend", "cannot import backend"),
                                         ("builtins:int", "is not a lowformer.engines.Backend subclass")])
def test_a_bad_plugin_variable_is_one_error_naming_it(value, said):
    with pytest.raises(LowformerError, match=said) as e:
        registry.load_plugins(value)
    assert registry.PLUGINS_ENV in str(e.value)
