"""`manifest.json`: what an export folder holds, how it was made, and whether each artifact passed.

This module is the only code that reads or writes `manifest.json`. The manifest is a typed object
(`Manifest` with `ArtifactEntry` items and their `ParityRecord` / `ValidationRecord`); writers change
it through `update(folder, fn)`, which re-reads, applies and writes atomically under a file lock, so
two processes recording into one folder never lose each other's entries. The JSON layout is schema 1
as before: old manifests load unchanged.

What other commands measure of an artifact is typed too: `ExplainRecord` (`validate --explain`),
`ProfileRecord` (`profile`), `LatencyRecord` (`bench`) and the `ValidationRecord`s of other runtimes,
read through `ArtifactEntry.explanation()` / `explain_runs()` / `profiles()` / `latencies()` /
`validation_runs()` and written through its `set_...` methods. They stay in the entry's facts as the
JSON they always were (a record writes exactly today's keys, in today's order), so manifests are
byte-compatible both ways. A measurement is recorded only onto an entry whose sha256 is that of the
bytes measured (`record_runs`, `recordable`): a file re-exported meanwhile keeps no figure of the old one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Iterable, Iterator, List, Optional, Tuple

from filelock import FileLock, Timeout

from lowformer.core.errors import LowformerError
from lowformer.core.files import PathLike, loads_strict, write_json
from lowformer.core.machine import tool_versions

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".manifest.lock"
SCHEMA = 1
DEFAULT_LOCK_TIMEOUT_S = 600.0


def _known(cls, data: Dict[str, Any]) -> Dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _require_dict(value: Any, what: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise LowformerError(f"manifest: {what} must be an object, not {type(value).__name__}")
    return value


@dataclass
class ParityRecord:
    """The export check: the artifact against the unfused model on a fixed batch of inputs."""

    max_abs: Optional[float]  # None (null) when a side gave NaN/Inf: `failure` says which
    rel_l2: Optional[float]
    cosine: Optional[float]
    top1_agreement: Optional[float]
    n: int
    thresholds: Dict[str, float] = field(default_factory=dict)
    inputs: str = "random"
    passed: bool = False
    failure: Optional[str] = None  # why it failed when no metric can say (non-finite logits)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ParityRecord":
        d = _require_dict(data, "parity")
        try:
            return cls(**{**_known(cls, d), "passed": bool(d.get("passed", False))})
        except TypeError as e:
            raise LowformerError(f"manifest: bad parity record ({e})") from None

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["failure"] is None:  # only when no metric says why: older manifests stay byte-equal
            del out["failure"]
        return out


@dataclass
class ValidationRecord:
    """The last `lowformer validate` of an artifact against its reference on labelled images."""

    date: str
    passed: bool
    data: str
    images: int
    error: Optional[str] = None
    limit: Optional[int] = None
    label_source: Optional[str] = None
    preprocessing: Optional[Dict[str, Any]] = None
    top1: Optional[float] = None
    top5: Optional[float] = None
    reference_top1: Optional[float] = None
    reference_top5: Optional[float] = None
    top1_delta: Optional[float] = None
    agreement: Optional[float] = None
    cosine: Optional[float] = None
    max_abs: Optional[float] = None
    flipped: int = 0
    flipped_images: List[Any] = field(default_factory=list)
    gate: Optional[Dict[str, Any]] = None
    failures: List[str] = field(default_factory=list)
    top1_delta_ci: Optional[List[float]] = None
    mcnemar_p: Optional[float] = None
    decision: Optional[str] = None

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ValidationRecord":
        d = _require_dict(data, "validation")
        try:
            return cls(**_known(cls, d))
        except TypeError as e:
            raise LowformerError(f"manifest: bad validation record ({e})") from None

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class _Measured:
    """A record another command keeps of an artifact (a dataclass): the keys it knows are typed fields,
    in the order they are written; keys it does not know (a newer lowformer's) are kept in `extra` and
    written back after them; a key missing from an older manifest takes its field's default. Fields in
    `OPTIONAL` are written only when set (`gpu`: only measurements on a GPU have one)."""

    WHAT: ClassVar[str] = "record"
    OPTIONAL: ClassVar[Tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, data: Any):
        d = _require_dict(data, f"a {cls.WHAT} record")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        try:
            return cls(**{k: v for k, v in d.items() if k in names},
                       extra={k: v for k, v in d.items() if k not in names})
        except TypeError as e:
            raise LowformerError(f"manifest: bad {cls.WHAT} record ({e})") from None

    def to_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        extra = out.pop("extra")
        for key in self.OPTIONAL:
            if out[key] is None:
                del out[key]
        out.update(extra)
        return out


@dataclass
class LatencyRecord(_Measured):
    """One `lowformer bench` timing of an artifact (`facts["latency"]["<runtime>/<precision>/b<batch>"]`,
    `/j<jobs>` added for several processes): the figures, and the machine and date they hold for."""

    WHAT: ClassVar[str] = "latency"
    OPTIONAL: ClassVar[Tuple[str, ...]] = ("gpu",)

    date: Optional[str] = None
    median_ms: Optional[float] = None
    p10_ms: Optional[float] = None
    p90_ms: Optional[float] = None
    mean_ms: Optional[float] = None
    images_per_s: Optional[float] = None
    isa: Optional[str] = None
    cpu: Optional[str] = None
    threads: Optional[int] = None
    jobs: int = 1
    batch: Optional[int] = None
    backend: Optional[str] = None
    precision: Optional[str] = None
    provider: Optional[str] = None
    device: Optional[str] = None
    load_average: Optional[List[float]] = None
    warnings: List[str] = field(default_factory=list)
    gpu: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ProfileRecord(_Measured):
    """One `lowformer profile` of an artifact (`facts["profile"]["<runtime>/<precision>/b<batch>"]`): the
    per-block and per-stage times (`[{"key", "ms", "share"}]`, model order), where and when measured."""

    WHAT: ClassVar[str] = "profile"
    OPTIONAL: ClassVar[Tuple[str, ...]] = ("gpu",)

    date: Optional[str] = None
    backend: Optional[str] = None
    precision: Optional[str] = None
    batch: Optional[int] = None
    device: Optional[str] = None
    isa: Optional[str] = None
    cpu: Optional[str] = None
    threads: Optional[int] = None
    iterations: Optional[int] = None
    coverage: Optional[float] = None
    total_ms: Optional[float] = None
    latency_median_ms: Optional[float] = None
    blocks: List[Dict[str, Any]] = field(default_factory=list)
    stages: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    gpu: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ExplainRecord(_Measured):
    """One `validate --explain` of an artifact (`facts["explain"]`; another runtime's or precision's run:
    `facts["explain_runs"]["<runtime>/<hint>"]`): per-block divergence from the reference
    (`blocks`: `[{"block", "cosine", "rel_l2", "sqnr_db", "max_abs", "added_db"}]`), flips, suggestion."""

    WHAT: ClassVar[str] = "explain"

    date: Optional[str] = None
    images: Optional[int] = None
    boundaries_kept: bool = True
    tolerance: Dict[str, Any] = field(default_factory=dict)
    blocks: List[Dict[str, Any]] = field(default_factory=list)
    first_diverging: Optional[str] = None
    flip_blocks: Dict[str, int] = field(default_factory=dict)
    flips: List[Dict[str, Any]] = field(default_factory=list)
    flipped: int = 0
    matched: Optional[int] = None
    total: Optional[int] = None
    unmatched: List[str] = field(default_factory=list)
    suggested_exclude: List[str] = field(default_factory=list)
    suggestion: Dict[str, Any] = field(default_factory=dict)
    top1: Optional[float] = None
    reference_top1: Optional[float] = None
    logits_max_abs_vs_artifact: Optional[float] = None
    name: Optional[str] = None
    path: Optional[str] = None
    backend: Optional[str] = None
    precision: Optional[str] = None
    runtime: Optional[str] = None
    inference_precision: Optional[str] = None
    first_nonfinite: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def sqnr_floor(self) -> Optional[float]:
        """The SQNR (dB) below which a block counted as diverging (None: not recorded)."""
        return self.tolerance.get("sqnr_db") if isinstance(self.tolerance, dict) else None

    def charted_blocks(self) -> List[Dict[str, Any]]:
        """The block rows that carry an SQNR (what a chart of the divergence shows)."""
        return [b for b in self.blocks or [] if isinstance(b, dict) and "sqnr_db" in b]


def _keyed(raw: Any, cls, on_error: Optional[Callable[[str, LowformerError], None]] = None) -> Dict[str, Any]:
    """`{key: record}` of one keyed fact (profile, latency, explain_runs, validations), read as `cls`: a
    value that is not a record is skipped (`on_error` hears of it with the error; None: raise)."""
    out: Dict[str, Any] = {}
    for key, value in (raw.items() if isinstance(raw, dict) else ()):
        try:
            out[key] = cls.from_dict(value)
        except LowformerError as e:
            if on_error is None:
                raise
            on_error(key, e)
    return out


# Keys of an artifact entry with a typed field; every other key is a format-specific fact.
_ENTRY_KEYS = ("path", "format", "precision", "sha256", "size", "parity", "validation")
# Facts other commands record on an artifact (bench, profile, validate --explain, validate in another
# runtime or precision): measurements of its bytes, kept by a re-export that leaves the bytes as they were.
RECORD_FACTS = ("latency", "profile", "explain", "explain_runs", "validations")
VERIFIED_NAME = ".verified.json"  # (size, mtime_ns, ctime_ns, inode) -> sha256 checked: large files are not rehashed


@dataclass
class ArtifactEntry:
    """One artifact file of the folder (path relative to it) and what is known about it.

    `facts` holds what only some formats have (opset and op counts of an ONNX, `int8` and
    `calibration` of a quantized one, `build`/`source`/`tensorrt`/`gpu` of an engine, notes).
    """

    path: str
    format: str
    precision: str = "fp32"
    sha256: Optional[str] = None
    parity: Optional[ParityRecord] = None
    validation: Optional[ValidationRecord] = None
    facts: Dict[str, Any] = field(default_factory=dict)
    size: Optional[int] = None  # bytes (absent in manifests written before 0.2)

    @classmethod
    def from_dict(cls, data: Any) -> "ArtifactEntry":
        d = _require_dict(data, "an artifact entry")
        for key in ("path", "format"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise LowformerError(f"manifest: an artifact entry has no {key!r} (got {d.get(key)!r})")
        size = d.get("size")
        if size is not None and not isinstance(size, int):
            raise LowformerError(f"manifest: {d['path']}: size {size!r} is not a number of bytes")
        if d.get("sha256") is not None and not isinstance(d["sha256"], str):
            raise LowformerError(f"manifest: {d['path']}: sha256 {d['sha256']!r} is not a hex digest")
        return cls(path=d["path"], format=d["format"], precision=str(d.get("precision", "fp32")),
                   sha256=d.get("sha256"), size=size,
                   parity=ParityRecord.from_dict(d["parity"]) if d.get("parity") else None,
                   validation=ValidationRecord.from_dict(d["validation"]) if d.get("validation") else None,
                   facts={k: v for k, v in d.items() if k not in _ENTRY_KEYS})

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"path": self.path, "format": self.format, "precision": self.precision,
                               "sha256": self.sha256, **self.facts}
        if self.size is not None:
            out["size"] = self.size
        if self.parity is not None:
            out["parity"] = self.parity.to_dict()
        if self.validation is not None:
            out["validation"] = self.validation.to_dict()
        return out

    def fact(self, key: str, default: Any = None) -> Any:
        return self.facts.get(key, default)

    def carry_records(self, old: "ArtifactEntry") -> bool:
        """Take over what other commands recorded on `old` (validation, latency, profile, explain)
        when it describes the very same bytes (sha256 equal): a re-export that rewrote an unchanged
        file keeps them. Records this entry already has win. Returns whether the bytes were equal."""
        if not (self.sha256 and old.sha256 == self.sha256 and old.size in (None, self.size)):
            return False
        if self.validation is None:
            self.validation = old.validation
        for key in RECORD_FACTS:
            if key in old.facts and key not in self.facts:
                self.facts[key] = old.facts[key]
        return True

    # ------------------------------------------------------------ what other commands measured (typed)
    def explanation(self) -> Optional[ExplainRecord]:
        """The artifact's last `validate --explain` as exported (None: none, or not a record)."""
        raw = self.facts.get("explain")
        return ExplainRecord.from_dict(raw) if isinstance(raw, dict) else None

    def explain_runs(self) -> Dict[str, ExplainRecord]:
        """Its explanations in other runtimes / precisions, by run key (`openvino/bf16`)."""
        return _keyed(self.facts.get("explain_runs"), ExplainRecord, lambda key, e: None)

    def profiles(self) -> Dict[str, ProfileRecord]:
        """Its `lowformer profile` records by `<runtime>/<precision>/b<batch>`."""
        return _keyed(self.facts.get("profile"), ProfileRecord, lambda key, e: None)

    def latencies(self) -> Dict[str, LatencyRecord]:
        """Its `lowformer bench` timings by `<runtime>/<precision>/b<batch>[/j<jobs>]`."""
        return _keyed(self.facts.get("latency"), LatencyRecord, lambda key, e: None)

    def validation_runs(self, on_error: Optional[Callable[[str, LowformerError], None]] = None,
                        ) -> Dict[str, ValidationRecord]:
        """Its validations in other runtimes / precisions (`openvino/bf16`) than its own (`validation`).
        An unreadable one raises, or is skipped and told to `on_error(key, error)` when given."""
        return _keyed(self.facts.get("validations"), ValidationRecord, on_error)

    def set_explanation(self, record: ExplainRecord, run: Optional[str] = None) -> None:
        """Record an explanation: the artifact's own (`run` None) or one of another runtime / precision."""
        if run is None:
            self.facts["explain"] = record.to_dict()
        else:
            self._set_keyed("explain_runs", run, record.to_dict())

    def set_profile(self, key: str, record: ProfileRecord) -> None:
        self._set_keyed("profile", key, record.to_dict())

    def set_latency(self, key: str, record: LatencyRecord) -> None:
        self._set_keyed("latency", key, record.to_dict())

    def set_validation_run(self, key: str, record: ValidationRecord) -> None:
        self._set_keyed("validations", key, record.to_dict())

    def _set_keyed(self, fact: str, key: str, value: Dict[str, Any]) -> None:
        old = self.facts.get(fact)
        self.facts[fact] = {**(old if isinstance(old, dict) else {}), key: value}

    @property
    def int8(self) -> Dict[str, Any]:
        return self.facts.get("int8") or {}

    @property
    def calibration(self) -> Dict[str, Any]:
        return self.facts.get("calibration") or {}


@dataclass
class Manifest:
    """What an export folder holds: the model, its weights, the input contract and the artifacts."""

    model: Dict[str, Any]
    checkpoint: Dict[str, Any]
    input: Dict[str, Any]
    preprocessing: Dict[str, Any]
    created: str = ""
    tools: Dict[str, str] = field(default_factory=dict)
    artifacts: List[ArtifactEntry] = field(default_factory=list)
    pending: Optional[List[str]] = None  # commands that remain to run on the target device
    schema: int = SCHEMA

    @classmethod
    def new(cls, model: Dict[str, Any], checkpoint: Dict[str, Any], input_spec: Dict[str, Any],
            preprocessing: Dict[str, Any]) -> "Manifest":
        return cls(model=model, checkpoint=checkpoint, input=input_spec, preprocessing=preprocessing,
                   created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   tools=tool_versions())

    # ------------------------------------------------------------------ typed views
    @property
    def model_name(self) -> str:
        return str(self.model["name"])

    @property
    def display_name(self) -> str:
        return str(self.model.get("display") or self.model["name"])

    @property
    def num_classes(self) -> int:
        return int(self.model.get("num_classes", 1000))

    @property
    def input_shape(self) -> List[Optional[int]]:
        return list(self.input.get("shape") or [None, 3, 224, 224])

    @property
    def random_weights(self) -> bool:
        """Weights drawn at export time (random-init.pt in the folder), not a trained checkpoint."""
        return self.checkpoint.get("source") == "random-init" or self.checkpoint.get("sha256") == "random-init"

    def checkpoint_path(self, folder: PathLike, full: bool = False) -> Optional[str]:
        """Absolute path of the weights the artifacts were exported from (None: none recorded),
        held to the rules of artifacts: inside the folder, present, with the recorded size and
        sha256 (`full`: re-hashed, the cache not trusted). A problem is one LowformerError."""
        path = self.checkpoint.get("path")
        if not path:
            return None
        folder = Path(folder).resolve()
        p = (folder / path).resolve()
        if Path(path).is_absolute() or not p.is_relative_to(folder):
            raise LowformerError(f"the manifest's checkpoint {path!r} is outside {folder}: refused (give the "
                                 "weights explicitly: --checkpoint PATH)")
        if not p.is_file():
            raise LowformerError(f"{p} is the manifest's checkpoint but missing (give the weights explicitly: "
                                 "--checkpoint PATH)")
        size, sha = self.checkpoint.get("size"), self.checkpoint.get("sha256")
        if isinstance(size, int) and p.stat().st_size != size:
            raise LowformerError(f"{p} is {p.stat().st_size} bytes but the manifest recorded {size}: the "
                                 "checkpoint changed after export")
        if isinstance(sha, str) and len(sha) == 64:
            cache = _VerifiedCache(folder, full)
            if cache.sha256(p) != sha:
                raise LowformerError(f"{p} does not match the manifest's checkpoint (sha256 differs): the weights "
                                     "were replaced after export")
            cache.save()
        return str(p)

    # ------------------------------------------------------------------ entries
    def entry(self, path: str) -> Optional[ArtifactEntry]:
        return next((a for a in self.artifacts if a.path == path), None)

    def upsert(self, entry: ArtifactEntry) -> None:
        """Add or replace (same path) one artifact entry."""
        self.artifacts = [a for a in self.artifacts if a.path != entry.path] + [entry]

    def entry_for(self, artifact: PathLike, folder: PathLike) -> Optional[ArtifactEntry]:
        rel = os.path.relpath(Path(artifact).resolve(), Path(folder).resolve())
        return self.entry(rel)

    # ------------------------------------------------------------------ JSON
    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> "Manifest":
        if not isinstance(data, dict) or "artifacts" not in data or "model" not in data:
            raise LowformerError(f"{where} is not a lowformer manifest")
        arts = data.get("artifacts")
        if not isinstance(arts, list):
            raise LowformerError(f"{where}: 'artifacts' must be a list, not {type(arts).__name__}")
        model = _require_dict(data["model"], "model")
        if not isinstance(model.get("name"), str):
            raise LowformerError(f"{where}: the model has no name")
        try:
            int(model.get("num_classes", 1000))
        except (TypeError, ValueError):
            raise LowformerError(f"{where}: num_classes {model.get('num_classes')!r} is not a number") from None
        schema = data.get("schema", SCHEMA)
        if schema != SCHEMA:
            raise LowformerError(f"{where}: schema {schema!r} is not supported (this lowformer reads {SCHEMA})")
        return cls(model=model, checkpoint=_require_dict(data.get("checkpoint") or {}, "checkpoint"),
                   input=_require_dict(data.get("input") or {}, "input"),
                   preprocessing=_require_dict(data.get("preprocessing") or {}, "preprocessing"),
                   created=str(data.get("created", "")), tools=dict(data.get("tools") or {}),
                   artifacts=[ArtifactEntry.from_dict(a) for a in arts], pending=data.get("pending"),
                   schema=SCHEMA)

    def to_dict(self) -> Dict[str, Any]:
        out = {"schema": self.schema, "model": self.model, "checkpoint": self.checkpoint, "input": self.input,
               "preprocessing": self.preprocessing, "created": self.created, "tools": self.tools,
               "artifacts": [a.to_dict() for a in self.artifacts]}
        if self.pending is not None:
            out["pending"] = self.pending
        return out

    @classmethod
    def load(cls, path: PathLike) -> "Manifest":
        p = manifest_path(path)
        try:
            data = loads_strict(p.read_text())
        except FileNotFoundError:
            raise LowformerError(f"no manifest at {p}") from None
        except (OSError, ValueError) as e:
            raise LowformerError(f"cannot read manifest {p}: {e}") from None
        return cls.from_dict(data, str(p))

    def save(self, folder: PathLike) -> Path:
        """Atomic write (callers that read-modify-write use `update`)."""
        p = manifest_path(folder)
        write_json(p, self.to_dict())
        return p

    def verify(self, folder: PathLike, skip_missing: bool = False, only: Optional[List[str]] = None,
               full: bool = False) -> List[str]:
        """Check every entry against the folder: path inside it, file present, size and sha256 as
        recorded (`full`: every file re-hashed, `.verified.json` not trusted). A problem is one
        LowformerError naming the file; missing files are returned as warnings instead when
        `skip_missing` (and their entries dropped from this object)."""
        folder = Path(folder).resolve()
        cache = _VerifiedCache(folder, full)
        warnings, kept = [], []
        for e in self.artifacts:
            if only is not None and e.path not in only:
                kept.append(e)
                continue
            p = (folder / e.path).resolve()
            if Path(e.path).is_absolute() or not p.is_relative_to(folder):
                raise LowformerError(f"manifest entry {e.path!r} points outside {folder}: refused")
            if not p.is_file():
                if not skip_missing:
                    raise LowformerError(f"{folder / e.path} is listed in the manifest but missing "
                                         "(skip_missing skips such entries)")
                warnings.append(f"skipped {e.path}: listed in the manifest but missing")
                continue
            size = p.stat().st_size
            if e.size is not None and size != e.size:
                raise LowformerError(f"{p} is {size} bytes but the manifest recorded {e.size}: the file changed "
                                     "after export (re-export it)")
            if e.sha256 and len(e.sha256) == 64 and cache.sha256(p) != e.sha256:
                raise LowformerError(f"{p} does not match its manifest entry (sha256 differs): the file was "
                                     "replaced or damaged after export (re-export it)")
            kept.append(e)
        self.artifacts = kept
        cache.save()
        return warnings


def manifest_path(path: PathLike) -> Path:
    p = Path(path)
    return p / MANIFEST_NAME if p.is_dir() else p


def folder_lock(folder: PathLike, timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> FileLock:
    """The lock every writer of an export folder holds (fcntl-based; released if the process dies)."""
    return FileLock(str(Path(folder) / LOCK_NAME), timeout=timeout)


@contextlib.contextmanager
def locked(lock: FileLock, folder: PathLike) -> Iterator[None]:
    """Hold `lock`; say once that we wait when another process holds it; one line on timeout."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for %s: another lowformer process is writing there", folder)
        try:
            lock.acquire()
        except Timeout:
            raise LowformerError(f"{folder} is locked by another lowformer process (waited "
                                 f"{lock.timeout:g} s; see lock_timeout)") from None
    try:
        yield
    finally:
        lock.release()


class _VerifiedCache:
    """sha256 of files already hashed, keyed by (size, mtime_ns, ctime_ns, inode): a stat instead of
    a rehash. A rewrite in place changes ctime (which no user-space call sets back) even when size
    and mtime are restored; a replaced file has another inode. `full`: hash every file (the
    entries are still refreshed)."""

    def __init__(self, folder: Path, full: bool = False):
        self.path = folder / VERIFIED_NAME
        self.dirty, self.full = False, full
        try:
            self.data = json.loads(self.path.read_text())
            if not isinstance(self.data, dict):
                self.data = {}
        except (OSError, ValueError):
            self.data = {}

    def sha256(self, p: Path) -> str:
        from lowformer.core.files import sha256_file

        st = p.stat()
        key, stamp = p.name, [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        hit = self.data.get(key)
        if not self.full and isinstance(hit, dict) and hit.get("stat") == stamp and isinstance(hit.get("sha256"), str):
            return hit["sha256"]
        digest = sha256_file(p)
        self.data[key] = {"stat": stamp, "sha256": digest}
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.dirty:
            try:
                write_json(self.path, self.data)
            except (OSError, LowformerError):  # a read-only folder is verified every time: fine
                pass


def update(folder: PathLike, fn: Callable[[Manifest], Optional[Manifest]],
           fresh: Optional[Manifest] = None, timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> Manifest:
    """Re-read the folder's manifest under its lock, apply `fn`, write it back atomically.

    `fresh` is used when the folder has no manifest yet; `fn` may return a replacement manifest.
    """
    folder = Path(folder)
    with locked(folder_lock(folder, timeout), folder):
        p = folder / MANIFEST_NAME
        if p.is_file():
            manifest = Manifest.load(p)
        elif fresh is not None:
            manifest = fresh
        else:
            raise LowformerError(f"no manifest at {p}")
        manifest = fn(manifest) or manifest
        manifest.save(folder)
        return manifest


@dataclass(frozen=True)
class Measurement:
    """One measurement of an artifact file, to record on its manifest entry: `record` (a LatencyRecord
    or ProfileRecord) under `key`, made on the bytes whose sha256 is `sha256` (the entry's digest as
    verified when the file was opened for measuring; None: it had no entry then)."""

    path: PathLike
    sha256: Optional[str]
    key: str
    record: Any


_SETTERS: Dict[str, Callable[[ArtifactEntry, str, Any], None]] = {
    "latency": ArtifactEntry.set_latency, "profile": ArtifactEntry.set_profile,
    "explain_runs": lambda entry, key, record: entry.set_explanation(record, key),
    "validations": ArtifactEntry.set_validation_run}


def recordable(target: ArtifactEntry, sha256: Optional[str], name: Any) -> bool:
    """Whether a measurement of the bytes `sha256` may go onto `target` (the entry as it is now, read
    under the folder's lock): only when they are the bytes it records. Otherwise the file was
    re-exported or replaced meanwhile; one warning line names it and nothing is recorded."""
    if target.sha256 == sha256:
        return True
    log.warning("%s changed while it was measured: not recorded (measure it again)", name)
    return False


def record_runs(runs: Iterable[Measurement], fact: str, timeout: float = DEFAULT_LOCK_TIMEOUT_S) -> int:
    """Record measurements of artifact files: each one's record goes into `facts[fact][key]` of the
    file's manifest entry (`fact`: latency, profile, explain_runs or validations), one locked update per
    folder, and only onto an entry whose sha256 is that of the bytes measured (`recordable`). Files
    without a manifest (or an entry) beside them are skipped; returns how many were recorded."""
    setter = _SETTERS[fact]
    by_folder: Dict[Path, List[Tuple[str, Measurement]]] = {}
    for run in runs:
        mpath = find_manifest_for(run.path)
        entry = Manifest.load(mpath).entry_for(run.path, mpath.parent) if mpath else None
        if entry is not None:
            by_folder.setdefault(mpath.parent, []).append((entry.path, run))  # type: ignore[union-attr]

    recorded = 0
    for folder, items in by_folder.items():
        def apply(manifest: Manifest, items=items) -> None:
            nonlocal recorded
            for rel, run in items:
                target = manifest.entry(rel)
                if target is not None and recordable(target, run.sha256, run.path):
                    setter(target, run.key, run.record)
                    recorded += 1
        update(folder, apply, timeout=timeout)
    return recorded


def find_manifest_for(artifact: PathLike) -> Optional[Path]:
    """The manifest beside an artifact file, if any."""
    p = Path(artifact).resolve().parent / MANIFEST_NAME
    return p if p.is_file() else None
