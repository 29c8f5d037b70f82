import json

import pytest
import torch

from conftest import FIXTURES
from helpers import assert_one_line_error, run_cli
from lowformer import LowformerError, create_model
from lowformer.models.checkpoints import identify_variant, load_checkpoint, read_state_dict

MANIFESTS = json.loads((FIXTURES / "manifests.json").read_text())


def official_state_dict(variant: str):
    """A state dict with the official checkpoint's keys and shapes (values from a seeded generator)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, shape, dtype in MANIFESTS[variant]["state_dict"]:
        if dtype != "float32":
            sd[k] = torch.zeros(shape, dtype=torch.int64)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.1
    return sd


@pytest.mark.parametrize("variant", list(MANIFESTS))
def test_official_manifest_loads_strictly(variant):
    model = create_model(variant)
    sd = official_state_dict(variant)
    load_checkpoint(model, sd)
    assert sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) \
        == MANIFESTS[variant]["params"] == sum(p.numel() for p in model.parameters())
    # the loaded tensor is the official one, under timm's name
    assert torch.equal(model.stem[0].conv.weight, sd["backbone.input_stem.op_list.0.conv.weight"])


def _save(obj, path):
    torch.save(obj, path)
    return str(path)


def test_all_official_file_forms_load(tmp_path):
    sd = official_state_dict("b0")
    forms = {
        "whole": sd,
        "under_state_dict": {"state_dict": sd},
        "ddp": {"state_dict": {"module." + k: v for k, v in sd.items()}},
        "old_head": {k.replace("head.", "head.opseq.", 1) if k.startswith("head.") else k: v for k, v in sd.items()},
    }
    ref = None
    for name, obj in forms.items():
        model = create_model("b0", _save(obj, tmp_path / f"{name}.pt"))
        out = model(torch.ones(1, 3, 64, 64))
        ref = out if ref is None else ref
        assert torch.allclose(out, ref), name


def test_wrong_variant_is_named(tmp_path):
    path = _save({"state_dict": official_state_dict("b0")}, tmp_path / "b0.pt")
    with pytest.raises(LowformerError, match="this checkpoint is a b0, not a b1") as e:
        create_model("b1", path)
    assert "\n" not in str(e.value) and "missing" in str(e.value)


def test_identify_variant():
    assert identify_variant(official_state_dict("E3")) == "e3"
    assert identify_variant({"x": torch.zeros(1)}) is None


def test_checkpoint_with_code_objects_is_refused(tmp_path):
    import argparse

    path = _save({"state_dict": {"a": torch.zeros(1)}, "obj": argparse.Namespace(x=1)}, tmp_path / "evil.pt")
    with pytest.raises(LowformerError, match="cannot read checkpoint"):
        read_state_dict(path)


def test_cli_mismatched_checkpoint_is_one_line(tmp_path):
    path = _save(official_state_dict("b0"), tmp_path / "b0.pt")
    assert_one_line_error(run_cli("info", "b1", "--checkpoint", path), "this checkpoint is a b0, not a b1")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(run_cli("info", "b0", "--checkpoint", str(tmp_path / "junk.pt")), "cannot read checkpoint")
    assert_one_line_error(run_cli("info", "b0", "--checkpoint", str(tmp_path / "none.pt")), "checkpoint not found")
