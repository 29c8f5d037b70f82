"""`lowformer export --to pt2`: torch.export program + AOTInductor package, their runners, profiles and errors.

One AOTInductor compile of a tiny timm model (~20 s on 2 cores) is shared by the module.
"""
import json
import os
import shutil
import warnings
import zipfile

import numpy as np
import pytest
import torch

from helpers import assert_ends_in_error, assert_one_line_error, manifest_dict, run_cli
from lowformer.core.errors import LowformerError
from lowformer.engines import load
from lowformer.engines.base import InputSpec
from lowformer.engines.pt2.runner import AOTIRunner, ExportedProgramRunner, package_kind
from lowformer.export.pipeline import export_model

MODEL, SIZE = "timm:test_efficientnet", 64


@pytest.fixture(scope="module")
def pt2_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("pt2")
    result = export_model(MODEL, to=("pt2",), image_size=SIZE, out=str(out))
    return out, result


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from lowformer.data.synthetic import generate_images

    return generate_images(tmp_path_factory.mktemp("imgs"), count=8, size=72, classes=4)


def _rewrite_zip(src, dst, member_suffix, edit):
    """Copy a .pt2 archive, passing the JSON member ending in `member_suffix` through `edit`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith(member_suffix):
                data = json.dumps(edit(json.loads(data))).encode()
            zout.writestr(info, data)


@pytest.mark.heavy  # the AOTInductor compile of the module's export (~30 s)
def test_pt2_export_writes_checked_program_and_package(pt2_export):
    out, result = pt2_export
    assert result.exit_code == 0 and not result.failed
    arts = {a["path"]: a for a in manifest_dict(out)["artifacts"]}
    assert set(arts) == {"model.pt2", "model_aoti_cpu.pt2"}
    pt2, aoti = arts["model.pt2"], arts["model_aoti_cpu.pt2"]
    assert (pt2["format"], aoti["format"]) == ("pt2", "aoti")
    for a in (pt2, aoti):
        assert a["parity"]["passed"] and a["parity"]["rel_l2"] <= 1e-4
        assert a["size"] == (out / a["path"]).stat().st_size and a["torch"] == torch.__version__
        assert a["dynamic_batch"] is True
    assert pt2["ops"] == pt2["ops_with_module"] > 0
    assert aoti["source"] == "model.pt2" and aoti["cpu_isa"] and aoti["compile_s"] > 0
    assert package_kind(str(out / "model.pt2")) == "pt2" and package_kind(str(out / "model_aoti_cpu.pt2")) == "aoti"
    assert not [f for f in os.listdir(out) if f.endswith(".tmp") or f.startswith((".staging-", ".model"))]


@pytest.mark.heavy  # the AOTInductor compile of the module's export (~30 s)
def test_runners_come_from_the_entry_or_the_archive_and_take_any_batch(pt2_export, tmp_path):
    out, _ = pt2_export
    from lowformer.models.factory import create_model

    ref = create_model(MODEL, str(out / "random-init.pt")).eval()
    x = torch.from_numpy(InputSpec(shape=(None, 3, SIZE, SIZE)).example(3))
    with torch.no_grad():
        want = ref(x).numpy()
    bare = tmp_path / "bare"  # no manifest beside them: the archive says which runner
    bare.mkdir()
    for name, cls in (("model.pt2", ExportedProgramRunner), ("model_aoti_cpu.pt2", AOTIRunner)):
        shutil.copy(out / name, bare / name)
        for folder in (out, bare):
            with load(str(folder / name)) as runner:
                assert isinstance(runner, cls)
                for batch in (x[:1], x):
                    got = runner.run(batch.numpy())
                    np.testing.assert_allclose(got, want[: len(batch)], rtol=1e-4, atol=1e-4)


@pytest.mark.heavy  # the AOTInductor compile of the module's export (~30 s)
def test_validate_bench_and_profile_through_the_cli(pt2_export, images, tmp_path):
    out, _ = pt2_export
    r = run_cli("validate", str(out), "--data", str(images), "--workers", "0")
    assert r.exit_code == 0, r.output
    arts = {a["path"]: a for a in manifest_dict(out)["artifacts"]}
    for name in ("model.pt2", "model_aoti_cpu.pt2"):  # generated images: gates not applied, agreement measured
        v = arts[name]["validation"]
        assert v["passed"] is not False and not v["failures"] and v["agreement"] >= 0.999, v

    r = run_cli("bench", str(out), "--latency", "--iterations", "3", "--warmup", "1", "--json")
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)["results"]
    assert sorted(x["backend"] for x in results) == ["aoti", "pt2"] and all(x["median_ms"] > 0 for x in results)

    report = tmp_path / "profile.json"
    r = run_cli("profile", str(out), "--iterations", "3", "--warmup", "1", "--json", str(report))
    assert r.exit_code == 0, r.output
    reports = {x["format"]: x for x in json.loads(report.read_text())["reports"]}
    assert set(reports) == {"pt2", "aoti"}
    from lowformer.models.factory import create_model
    from lowformer.models.fusion import fuse

    model = create_model(MODEL)
    fuse(model)  # the exported model is the BN-fused one
    modules = {n for n, _ in model.named_modules()}
    for rep in reports.values():
        assert rep["coverage"] >= 0.99, rep["warnings"]
        named = [row for row in rep["rows"] if row["module"]]
        assert named and all(row["module"] in modules for row in named)
        assert {row["how"] for row in named} <= {"name", "kernel-split"}
    assert not reports["aoti"]["warnings"]


@pytest.mark.heavy  # the AOTInductor compile of the module's export (~30 s)
def test_exported_graph_names_every_op_node_exactly(pt2_export):
    out, _ = pt2_export
    with load(str(out / "model.pt2")) as runner:
        prof = runner.profile_run(runner.input_spec.example(1), iterations=2, warmup=1)
    ops = [t for t in prof.timings if t.op.startswith("aten.") and "sym_size" not in t.op]
    assert ops and all(t.fused_from for t in ops)
    assert {t.fused_from[0] for t in ops if t.op == "aten.conv2d.default"} >= {"conv_stem", "blocks.0.0.conv"}


def test_fixed_batch_program_is_static(tmp_path):
    from lowformer.engines.pt2.writer import export_program, save_program
    from lowformer.models.factory import create_model

    model = create_model(MODEL).eval()
    program, facts = export_program(model, torch.zeros(2, 3, SIZE, SIZE), dynamic=False)
    assert facts["dynamic_batch"] is False
    save_program(program, tmp_path / "fixed.pt2")
    runner = ExportedProgramRunner.from_file(str(tmp_path / "fixed.pt2"), InputSpec(shape=(2, 3, SIZE, SIZE)))
    assert runner.run(np.zeros((5, 3, SIZE, SIZE), np.float32)).shape == (5, 1000)  # fixed chunks of 2


@pytest.mark.heavy  # the AOTInductor compile of the module's export (~30 s)
def test_truncated_pt2_is_one_line_error(pt2_export, images, tmp_path):
    out, _ = pt2_export
    for name in ("model.pt2", "model_aoti_cpu.pt2"):
        data = (out / name).read_bytes()
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 2])
        assert_ends_in_error(run_cli("bench", str(cut), "--latency", "--iterations", "2"), "not a complete .pt2 archive")
    # inside its export folder the manifest's size and sha256 catch it first
    folder = tmp_path / "folder"
    shutil.copytree(out, folder)
    data = (folder / "model.pt2").read_bytes()
    (folder / "model.pt2").write_bytes(data[: len(data) // 2])
    r = run_cli("bench", str(folder / "model.pt2"), "--latency", "--iterations", "2")
    assert_ends_in_error(r, "model.pt2")


@pytest.mark.heavy  # the AOTInductor compile of the module's export (~30 s)
def test_pt2_from_another_torch_is_one_line_error(pt2_export, tmp_path):
    out, _ = pt2_export

    def newer(doc):
        doc["schema_version"] = {"major": 999, "minor": 0}
        doc["torch_version"] = "9.9.0"
        return doc
    _rewrite_zip(out / "model.pt2", tmp_path / "model.pt2", "models/model.json", newer)
    assert_ends_in_error(run_cli("bench", str(tmp_path / "model.pt2"), "--latency", "--iterations", "2"),
                          "cannot load torch.export program", "saved by torch 9.9.0")

    def older(meta):
        meta["lowformer_torch"] = "2.4.0"
        return meta
    _rewrite_zip(out / "model_aoti_cpu.pt2", tmp_path / "model_aoti_cpu.pt2", "wrapper_metadata.json", older)
    assert_ends_in_error(run_cli("bench", str(tmp_path / "model_aoti_cpu.pt2"), "--latency", "--iterations", "2"),
                          "compiled by torch 2.4.0")


@pytest.mark.heavy  # the AOTInductor compile of the module's export (~30 s)
def test_package_for_another_cpu_is_one_line_error(pt2_export, monkeypatch):
    out, _ = pt2_export
    import lowformer.engines.pt2.runner as pt2

    monkeypatch.setattr(pt2, "_cpu_flags", lambda: {"sse2", "avx2", "fma"})
    isa = manifest_dict(out)["artifacts"][1]["cpu_isa"] or ""
    if "AVX512" not in isa and "AMX" not in isa:
        pytest.skip(f"this CPU's package ISA ({isa}) runs on an AVX2 CPU")
    with pytest.raises(LowformerError, match="this CPU lacks"):
        load(str(out / "model_aoti_cpu.pt2"))


def test_missing_compiler_fails_before_any_work(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "out"
    assert_one_line_error(run_cli("export", MODEL, "--to", "pt2", "--image-size", str(SIZE), "--out", str(out)),
                          "C++ compiler")
    assert not out.exists() or not os.listdir(out)


def test_failed_compile_leaves_the_folder_as_it_was(tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("C++ compile error: something went wrong\nmore detail")
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", broken)
    out = tmp_path / "out"
    r = run_cli("export", MODEL, "--to", "pt2", "--image-size", str(SIZE), "--out", str(out))
    assert r.exit_code != 0 and "AOTInductor could not compile model_aoti_cpu.pt2" in r.stderr
    assert "Traceback" not in r.output + r.stderr
    assert not [f for f in os.listdir(out) if f not in (".manifest.lock",)], os.listdir(out)


def test_torchscript_runner_hides_only_the_jit_deprecation(tmp_path):
    from lowformer.engines.torchscript.runner import TorchScriptRunner, jit_deprecation_filtered
    from lowformer.engines.torchscript.writer import export_torchscript

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    export_torchscript(model, tmp_path / "m.ts", torch.zeros(1, 3, 8, 8))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        TorchScriptRunner.from_file(str(tmp_path / "m.ts"), InputSpec(shape=(None, 3, 8, 8)))
        with jit_deprecation_filtered():
            warnings.warn("`torch.jit.load` is deprecated: not from torch, so shown", FutureWarning)
            warnings.warn("another FutureWarning", FutureWarning)
    messages = [str(w.message) for w in seen]
    assert not [m for m in messages if "torch.jit" in m and "not from torch" not in m], messages
    assert "another FutureWarning" in messages and any("not from torch" in m for m in messages)
