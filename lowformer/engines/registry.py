"""The backend registry: `register`, `get`, `all_backends`, and the lookups the rest of the
package makes instead of naming runtimes (which backend owns a format, which runtimes can run it,
which backend writes an `export --to` target).

The built-in backends are registered by `lowformer.engines` when it is imported; a backend from
elsewhere (a plugin, a test) is one `register(MyBackend())` call. A registered backend whose class
can be imported travels to lowformer's worker processes (bench's timing workers) through
$LOWFORMER_BACKENDS, which `register` keeps up to date; set it yourself to add plugin backends to
the command line: `LOWFORMER_BACKENDS=mypackage.backend:MyBackend` (comma-separated).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

from lowformer.core.errors import LowformerError
from lowformer.core.files import PathLike
from lowformer.engines.backend import Backend

_BACKENDS: Dict[str, Backend] = {}
PLUGINS_ENV = "LOWFORMER_BACKENDS"
_BUILTIN_PREFIX = "lowformer.engines."


def register(backend: Backend, replace: bool = False) -> Backend:
    """Add a backend (one instance per runtime name). Its formats, suffixes and export targets must
    not be claimed by another backend already, unless `replace` (the same name) is asked."""
    if not getattr(backend, "name", ""):
        raise LowformerError(f"{backend!r} has no name")
    old = _BACKENDS.get(backend.name)
    if old is not None and not replace:
        raise LowformerError(f"a backend named {backend.name!r} is registered already")
    for other in _BACKENDS.values():
        if other.name == backend.name:
            continue
        clash = (set(other.formats) & set(backend.formats)) or (set(other.suffixes) & set(backend.suffixes)) or \
            (set(other.export_targets) & set(backend.export_targets)) or \
            ({other.name, *other.aliases} & {backend.name, *backend.aliases})
        if clash:
            raise LowformerError(f"backend {backend.name!r} claims {', '.join(sorted(clash))}, "
                                 f"which backend {other.name!r} has")
    _BACKENDS[backend.name] = backend
    if not type(backend).__module__.startswith(_BUILTIN_PREFIX):
        _export_plugins()
    return backend


def unregister(name: str) -> None:
    """Remove a backend (tests that register their own take it out again)."""
    _BACKENDS.pop(name, None)
    _export_plugins()


def _plugin_spec(backend: Backend) -> Dict[str, Any]:
    cls = type(backend)
    module = sys.modules.get(cls.__module__)
    where = os.path.dirname(os.path.abspath(module.__file__)) if module and getattr(module, "__file__", None) else None
    return {"module": cls.__module__, "class": cls.__qualname__, "path": where}


def _export_plugins() -> None:
    """Keep $LOWFORMER_BACKENDS naming every registered backend from outside lowformer, so processes
    lowformer starts (timing workers) register them too."""
    specs = [_plugin_spec(b) for b in _BACKENDS.values() if not type(b).__module__.startswith(_BUILTIN_PREFIX)]
    if specs:
        os.environ[PLUGINS_ENV] = json.dumps(specs)
    elif os.environ.get(PLUGINS_ENV, "").startswith("["):
        del os.environ[PLUGINS_ENV]


def load_plugins(value: str) -> None:
    """Register the backends $LOWFORMER_BACKENDS names: `module:Class` items (comma-separated), or
    the JSON list `register` writes. One line when one cannot be imported."""
    value = value.strip()
    if not value:
        return
    if value.startswith("["):
        try:
            specs = json.loads(value)
            assert isinstance(specs, list) and all(isinstance(x, dict) and "module" in x and "class" in x
                                                   for x in specs)
        except (ValueError, AssertionError):
            raise LowformerError(f"{PLUGINS_ENV}: not a list of backends (`module:Class`, comma-separated)") from None
    else:
        specs = [{"module": item.split(":")[0].strip(), "class": item.split(":", 1)[-1].strip(), "path": None}
                 for item in value.split(",") if item.strip()]
    for spec in specs:
        if spec.get("path") and spec["path"] not in sys.path:
            sys.path.append(spec["path"])
        where = f"{spec['module']}:{spec['class']}"
        try:
            cls = getattr(importlib.import_module(spec["module"]), spec["class"])
        except (ImportError, AttributeError, ValueError) as e:
            raise LowformerError(f"{PLUGINS_ENV}: cannot import backend {where} ({type(e).__name__}: {e})") from None
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise LowformerError(f"{PLUGINS_ENV}: {where} is not a lowformer.engines.Backend subclass")
        if cls.name not in _BACKENDS:
            register(cls())


def all_backends() -> List[Backend]:
    """Every registered backend, in registration order."""
    return list(_BACKENDS.values())


def names() -> List[str]:
    return list(_BACKENDS)


def get(name: str) -> Backend:
    """The backend of a runtime name or alias (case-insensitive); one line for an unknown one."""
    key = str(name).strip().lower()
    for b in _BACKENDS.values():
        if key == b.name or key in b.aliases:
            return b
    raise LowformerError(f"unknown runtime {name!r} (known: {', '.join(_BACKENDS)})")


def owner(fmt: str) -> Backend:
    """The backend that owns (natively runs) an artifact format."""
    for b in _BACKENDS.values():
        if fmt in b.formats:
            return b
    raise LowformerError(f"no backend runs artifact format {fmt!r} (known: {', '.join(known_formats())})")


def known_formats() -> List[str]:
    return [f for b in _BACKENDS.values() for f in b.formats]


def file_formats() -> List[str]:
    """The formats that are files (those of backends that own file suffixes)."""
    return [f for b in _BACKENDS.values() if b.suffixes for f in b.formats]


def suffixes() -> Dict[str, str]:
    """Every artifact file suffix -> its format."""
    return {s: f for b in _BACKENDS.values() for s, f in b.suffixes.items()}


def format_of(path: PathLike) -> str:
    """An artifact's format from its file suffix (a manifest entry's `format` says more: a `.pt2`
    is a torch.export program or an AOTInductor package)."""
    table = suffixes()
    fmt = table.get(Path(path).suffix.lower())
    if fmt is None:
        raise LowformerError(f"unknown artifact type {Path(path).name!r} (expected {', '.join(sorted(table))})")
    return fmt


def runtimes_for(fmt: str) -> Tuple[str, ...]:
    """The runtimes that can run an artifact format: its owner first, then those that also run it."""
    first = owner(fmt).name
    return (first, *[b.name for b in _BACKENDS.values() if fmt in b.runs_also and b.name != first])


def choosable_runtimes() -> List[str]:
    """What `--runtime` names: the runtimes of every format that more than one runtime can run."""
    out: List[str] = []
    for b in _BACKENDS.values():
        for fmt in b.runs_also:
            out += [r for r in runtimes_for(fmt) if r not in out]
    return out


def inference_precisions() -> List[str]:
    """Every inference-precision setting some backend takes (`--precision`)."""
    return list(dict.fromkeys(p for b in _BACKENDS.values() for p in b.inference_precisions))


def export_targets() -> List[str]:
    """Every `export --to` name, canonical names first, in the backends' writing order."""
    ordered = sorted((b for b in _BACKENDS.values() if b.export_targets), key=lambda b: b.export_order)
    return [b.export_targets[0] for b in ordered] + [t for b in ordered for t in b.export_targets[1:]]


def writer(target: str) -> Backend:
    """The backend that writes an `export --to` target."""
    for b in _BACKENDS.values():
        if target in b.export_targets:
            return b
    raise LowformerError(f"unknown export target {target!r} (known: {', '.join(export_targets())})")


def all_companions(path: Path) -> List[Path]:
    """The files that go with an artifact (by its format's owner; none for an unknown suffix)."""
    fmt = suffixes().get(Path(path).suffix.lower())
    return owner(fmt).companions(Path(path)) if fmt else []
