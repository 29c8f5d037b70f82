"""Small helpers shared by tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

import torch
from safetensors import safe_open

from lowformer.models.factory import create_from_reference_config


def load_mini(path: Path) -> Tuple[torch.nn.Module, Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """A reference mini network: (model with its official-key weights loaded, inputs, logits)."""
    from lowformer.models.checkpoints import load_checkpoint

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model = create_from_reference_config(meta["config"], json.loads(meta["head_widths"]), int(meta["n_classes"]))
    sd = {k[len("state_dict."):]: v.float() if v.is_floating_point() else v
          for k, v in tensors.items() if k.startswith("state_dict.")}
    load_checkpoint(model, sd)
    inputs = {k: v.float() for k, v in tensors.items() if k.startswith("input_")}
    logits = {k: v.float() for k, v in tensors.items() if k.startswith("logits_")}
    return model.eval(), inputs, logits


def run_cli(*args: str):
    """Invoke the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from lowformer.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def assert_ends_in_error(result, *fragments: str) -> None:
    """A command that showed progress first: no traceback, and its last line is the one error line."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output + result.stderr
    last = " ".join(result.stderr.strip().splitlines()[-1:])
    assert last.startswith("error:"), result.stderr[-2000:]
    for frag in fragments:
        assert frag in last, (frag, last)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    err = result.stderr.strip()
    assert "Traceback" not in result.output + err
    assert err.startswith("error:") and "\n" not in err, err
    for frag in fragments:
        assert frag in err, err


def manifest_dict(folder):
    """The folder's manifest.json as the JSON object it is (read and checked by the typed Manifest)."""
    from lowformer.artifacts import Manifest

    return Manifest.load(folder).to_dict()


class RecordingProgress:
    """A lowformer.core.progress.Progress that records (done, total) after every step."""

    def __init__(self):
        self.seen = []

    def task(self, description, total=None, completed=0):
        import contextlib

        owner = self

        class _Task:
            done = completed

            def advance(self, n=1, status=None, description=None):
                self.done += n
                owner.seen.append((self.done, total))

        return contextlib.nullcontext(_Task())
