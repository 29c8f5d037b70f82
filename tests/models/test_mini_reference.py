"""The four reference mini networks (official keys, odd widths) reproduce the reference logits."""
import pytest
import torch

from conftest import FIXTURES
from helpers import load_mini

MINIS = sorted((FIXTURES / "mini").glob("*.safetensors"))


@pytest.mark.parametrize("path", MINIS, ids=lambda p: p.stem)
def test_mini_network_matches_reference(path):
    model, inputs, logits = load_mini(path)
    with torch.no_grad():
        for size in (64, 72):
            out = model(inputs[f"input_{size}"])
            assert (out - logits[f"logits_{size}"]).abs().max() <= 1e-4, (path.stem, size)


def test_fixtures_present():
    assert len(MINIS) == 4
