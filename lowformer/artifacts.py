"""`manifest.json`: what an export folder holds, how it was made, and whether each artifact passed.

This module is the only code that reads or writes `manifest.json`. The manifest is a typed object
(`Manifest` with `ArtifactEntry` items and their `ParityRecord` / `ValidationRecord`); writers change
it through `update(folder, fn)`, which re-reads, applies and writes atomically under a file lock, so
two processes recording into one folder never lose each other's entries. The JSON layout is schema 1
as before: old manifests load unchanged.
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
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

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


def record_runs(runs: Iterable[Tuple[PathLike, str, Dict[str, Any]]], fact: str) -> int:
    """Record measurements of artifact files: each (file, key, record) goes into
    `facts[fact][key]` of the file's manifest entry, one locked update per folder. Files without a
    manifest (or an entry) beside them are skipped; returns how many were recorded."""
    by_folder: Dict[Path, List[Tuple[str, str, Dict[str, Any]]]] = {}
    for path, key, record in runs:
        mpath = find_manifest_for(path)
        entry = Manifest.load(mpath).entry_for(path, mpath.parent) if mpath else None
        if entry is not None:
            by_folder.setdefault(mpath.parent, []).append((entry.path, key, record))  # type: ignore[union-attr]

    for folder, items in by_folder.items():
        def apply(manifest: Manifest, items=items) -> None:
            for rel, key, record in items:
                target = manifest.entry(rel)
                if target is not None:
                    target.facts[fact] = {**(target.facts.get(fact) or {}), key: record}
        update(folder, apply)
    return sum(len(v) for v in by_folder.values())


def find_manifest_for(artifact: PathLike) -> Optional[Path]:
    """The manifest beside an artifact file, if any."""
    p = Path(artifact).resolve().parent / MANIFEST_NAME
    return p if p.is_file() else None
