"""Harness workers (lowformer.core.harness): what a timing process loads, named `module:function`.

Each returns `(call_for, facts)`: `call_for(batch_size)` is one inference call as a zero-argument
function (lowformer.engines.timing.call_once), `facts` the runner's description.
"""
from __future__ import annotations

from typing import Any, Dict

from lowformer.export.speed import open_artifact

__all__ = ["open_artifact", "open_target"]


def open_target(target: Dict[str, Any]):
    """A `lowformer bench` target (the fields of lowformer.targets.Target): its runner, built as bench builds
    it; each batch size's input is checked before it is timed (a model computing NaN/Inf is refused)."""
    from lowformer.bench.run import check_output
    from lowformer.engines.timing import call_once
    from lowformer.targets import Target

    t = Target(**target)
    runner = t.build_runner()

    def call_for(batch_size: int):
        example = runner.input_spec.example(batch_size)
        check_output(runner, example, t)
        return call_once(runner, example)
    return call_for, runner.describe()
