"""The per-image records of a run or of one of its shards, on disk and merged.

A records file (`validate --shard K/N --records FILE`) holds what shard K of N measured image by
image (each model's `Tally` columns) and what the run was (`run`: the artifacts with their sha256,
the reference, preprocessing, gates, batch size, and the image list's checksum and labels). Merging
checks that the files are shards of one run (same `run`, same images), that together they are every
shard once and hold exactly the images the split gives each, and joins their columns: the figures
are then taken from the records as in one process (lowformer.validate.result_from_records).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lowformer.core.errors import LowformerError
from lowformer.core.files import PathLike, write_json
from lowformer.evaluate.shards import Shard, shard_positions
from lowformer.evaluate.tally import Tally

SCHEMA = 1
KIND = "lowformer-validate-records"
# `run` keys that name this machine's files (or say so in a sentence), not what was run: not compared
LOCAL_KEYS = {"path", "root", "labels_file", "warnings"}


def image_list_checksum(samples: Sequence[Any], root: PathLike) -> str:
    """sha256 of the run's image list (paths relative to the data folder, labels), in order. Paths
    are not resolved: a folder of links (git-annex, DVC, a subset) names the same images anywhere."""
    h = hashlib.sha256()
    base = os.path.abspath(root)
    for s in samples:
        rel = os.path.relpath(os.path.abspath(s.path), base)
        h.update(f"{Path(rel).as_posix()}\t{int(s.label)}\n".encode())
    return h.hexdigest()


@dataclass
class RunRecords:
    """One shard's records (`shard` K/N), or several merged (`shard` 1/1 once whole)."""

    shard: Shard
    run: Dict[str, Any]  # what every shard of the run shares (see the module's docstring)
    positions: List[int]  # the images scored (their positions in the run's image list)
    paths: List[str]  # and their files, in the same order
    reference: Tally
    artifacts: List[Tally]
    errors: List[Optional[str]]  # per artifact: why it stopped being run, or None
    bad_images: List[Dict[str, Any]] = field(default_factory=list)  # {path, error, position}
    warnings: List[str] = field(default_factory=list)
    machine: Dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    date: str = ""
    # with --explain, per shard in shard order: {"records": the explain consumer's, "error": one line or None}
    explain: List[Dict[str, Any]] = field(default_factory=list)

    @property
    def labels(self) -> List[int]:
        return self.run["images"]["labels"]

    def path_of(self) -> Dict[int, str]:
        return dict(zip(self.positions, self.paths))

    # ------------------------------------------------------------------ on disk
    def to_dict(self) -> Dict[str, Any]:
        body = {"shard": [self.shard.index, self.shard.count], "run": self.run, "positions": self.positions,
                "paths": self.paths, "reference": self.reference.to_records(),
                "artifacts": [t.to_records() for t in self.artifacts], "errors": self.errors,
                "bad_images": self.bad_images, "warnings": self.warnings, "machine": self.machine,
                "seconds": self.seconds, "date": self.date, "explain": self.explain}
        return {"schema": SCHEMA, "kind": KIND, "sha256": _digest(body), **body}

    def write(self, path: PathLike) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: PathLike) -> "RunRecords":
        """The records in `path`, verified (one LowformerError line for anything else)."""
        try:
            data = json.loads(Path(path).read_text())
        except OSError as e:
            raise LowformerError(f"cannot read records {path}: {e.strerror or e}") from None
        except ValueError:
            raise LowformerError(f"{path} is not a records file of `validate --shard` (not JSON, or cut short)") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, name: str) -> "RunRecords":
        """Records from `to_dict`'s JSON, verified against their sha256 (`name`: where they came from)."""
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise LowformerError(f"{name} is not a records file of `validate --shard`")
        if data.get("schema") != SCHEMA:
            raise LowformerError(f"{name} has records schema {data.get('schema')}; this lowformer reads {SCHEMA}")
        body = {k: v for k, v in data.items() if k not in ("schema", "kind", "sha256")}
        if data.get("sha256") != _digest(body):
            raise LowformerError(f"{name} was changed after it was written (its sha256 does not match): "
                                 "score that shard again")
        try:
            return cls(Shard(*data["shard"]), data["run"], [int(p) for p in data["positions"]],
                       list(data["paths"]), Tally.from_records(data["reference"]),
                       [Tally.from_records(t) for t in data["artifacts"]], list(data["errors"]),
                       list(data["bad_images"]), list(data["warnings"]), dict(data["machine"]),
                       float(data["seconds"]), str(data["date"]), list(data["explain"]))
        except (KeyError, TypeError, ValueError) as e:
            raise LowformerError(f"{name} is not a complete records file ({type(e).__name__}: {e})") from None


def merge(files: Sequence[PathLike]) -> RunRecords:
    """The records of every shard of one run, read from `files` and joined (`merge_records`)."""
    if not files:
        raise LowformerError("name the records files to merge (one per shard)")
    return merge_records([(str(f), RunRecords.read(f)) for f in files])


def merge_records(parts: Sequence[Tuple[str, RunRecords]]) -> RunRecords:
    """The records of every shard of one run, joined (one LowformerError line when they are not:
    another run or other images, a shard given twice or missing, images outside a shard's share);
    `parts`: (where each came from, its records)."""
    parts = sorted(parts, key=lambda p: p[1].shard.index)
    first_name, first = parts[0]  # shard 1 when complete: its run, paths and machine are the merge's
    for name, part in parts[1:]:
        _same_run(first_name, first, name, part)
    count = first.shard.count
    given: Dict[int, str] = {}
    for name, part in parts:
        if part.shard.count != count:
            raise LowformerError(f"{name} is shard {part.shard} but {first_name} is shard {first.shard}: "
                                 "shards of one run have the same N")
        if part.shard.index in given:
            raise LowformerError(f"overlapping shards: shard {part.shard} is both {given[part.shard.index]} "
                                 f"and {name}")
        given[part.shard.index] = name
    missing = [f"{k}/{count}" for k in range(1, count + 1) if k not in given]
    if missing:
        raise LowformerError(f"missing shard{'s' if len(missing) > 1 else ''} {', '.join(missing)} of {count}: "
                             "merge needs every shard of the run")
    labels = first.labels
    samples = [_Labelled(lab) for lab in labels]
    for name, part in parts:
        expected = set(shard_positions(samples, int(first.run["batch_size"]), part.shard))
        got = set(part.positions) | {int(b["position"]) for b in part.bad_images}
        if got != expected:
            raise LowformerError(f"{name} (shard {part.shard}) holds other images than its share: "
                                 f"{len(got - expected)} outside it, {len(expected - got)} of it missing")
    records = [p for _, p in parts]
    artifacts, errors = [], []
    for i in range(len(first.artifacts)):
        # one process stops running an artifact at its first failure: so do the shards after it
        stop = next((k for k, r in enumerate(records) if r.errors[i]), len(records) - 1)
        artifacts.append(Tally.merged([r.artifacts[i] for r in records[:stop + 1]]))
        errors.append(records[stop].errors[i])
    warnings = list(first.warnings) + [w for r in records[1:] for w in r.warnings if w not in first.warnings]
    cpus = {r.machine.get("cpu"): r.machine for r in records}
    if len(cpus) > 1:
        warnings.append(f"the shards ran on {len(cpus)} kinds of CPU ({', '.join(sorted(map(str, cpus)))}): "
                        "INT8 and BF16 figures can depend on the CPU's kernels")
    return RunRecords(Shard(), first.run, [p for r in records for p in r.positions],
                      [p for r in records for p in r.paths], Tally.merged([r.reference for r in records]),
                      artifacts, errors, [b for r in records for b in r.bad_images], warnings, first.machine,
                      max(r.seconds for r in records), min(r.date for r in records),
                      [e for r in records for e in r.explain])


@dataclass
class _Labelled:
    label: int


def _same_run(a_name: str, a: RunRecords, b_name: str, b: RunRecords) -> None:
    ia, ib = a.run["images"], b.run["images"]
    if ia["checksum"] != ib["checksum"]:
        raise LowformerError(f"{b_name} was scored on other images than {a_name} (checksum of the image list "
                             f"{ib['checksum'][:12]} vs {ia['checksum'][:12]}): merge shards of one data set")
    for key in a.run:
        mine, theirs = _portable(a.run[key]), _portable(b.run.get(key))
        if key == "images" or mine == theirs:
            continue
        if not isinstance(mine, (dict, list)):
            what = f"the {key.replace('_', ' ')} differs ({theirs} vs {mine})"
        else:
            what = (f"the {'artifacts' if key == 'artifacts' else key} differ "
                    f"({'manifest' if key in ('artifacts', 'reference') else key} checksum "
                    f"{_digest(theirs)[:12]} vs {_digest(mine)[:12]})")
        raise LowformerError(f"{b_name} records another run than {a_name}: {what}")


def _portable(value: Any) -> Any:
    """`value` without the keys that name one machine's files."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items() if k not in LOCAL_KEYS}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    return value


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, allow_nan=False).encode()).hexdigest()
