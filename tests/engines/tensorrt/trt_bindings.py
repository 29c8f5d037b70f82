"""The real TensorRT Python bindings, made inspectable without TensorRT or a GPU (tests only).

PyPI's `tensorrt-cu12-bindings` / `tensorrt-cu13-bindings` wheels (~1.3 MB, python tag cp311 for this
venv: `cp311-none-manylinux_2_17/2_28_x86_64`) hold the real pybind module `tensorrt_bindings/tensorrt.so`
(`import tensorrt` re-exports it). It links against libnvinfer.so.N, libnvinfer_plugin.so.N and
libnvonnxparser.so.N (N = TensorRT major) but needs only ten C entry points from them, so tiny stub
libraries with those sonames (trt_stubs/nvinfer_stubs.c beside this file, built here with the C compiler) let it
import. The stubs are preloaded with ctypes RTLD_GLOBAL in a fresh subprocess per version (the three
versions share the module name `tensorrt_bindings`), which then dumps the whole API to JSON: every
class with its members (methods with their pybind signatures, properties and whether they are
writable, nested classes, enum members), the protocols it offers (the dunders of PROTOCOLS it defines
or disables, whether its objects have the buffer protocol, what its class object supports) and the
module's functions and values.

Everything lives in a cache folder reused across runs (`$LOWFORMER_TRT_CACHE`, default
~/.cache/lowformer/trt-bindings/): wheels/ (from `pip download`), unpacked/ (one folder per wheel,
never installed into the venv), stubs/ and api/ (the JSON dumps).

    python tests/engines/tensorrt/trt_bindings.py   # fetch, build and dump every version; print the JSON paths

Where the wheels cannot be had (offline, no C compiler) the tests skip (BindingsUnavailable), except
where the bindings are required (`required()`: CI=true, LOWFORMER_REQUIRE_TRT_BINDINGS=1 or
LOWFORMER_TRT_BINDINGS=required), where the same failure raises BindingsRequired and the tests fail.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent  # tests/engines/tensorrt/
REPO = HERE.parents[2]
STUB_SOURCE = HERE / "trt_stubs" / "nvinfer_stubs.c"
CACHE = Path(os.environ.get("LOWFORMER_TRT_CACHE", Path.home() / ".cache" / "lowformer" / "trt-bindings"))
PY_TAG = f"cp{sys.version_info.major}{sys.version_info.minor}"  # the wheels are built per CPython version

# key -> (distribution, version): 10.3 is JetPack 6's TensorRT; 10.16 the newest 10.x; 11.4 a TensorRT 11.
VERSIONS: Dict[str, tuple] = {
    "10.3": ("tensorrt-cu12-bindings", "10.3.0"),
    "10.16": ("tensorrt-cu12-bindings", "10.16.1.11"),
    "11.4": ("tensorrt-cu13-bindings", "11.4.0.106"),
}
# C libraries the module needs, with the -D that selects each one's symbols in the stub source.
LIBS = {"libnvinfer": "LIB_NVINFER", "libnvinfer_plugin": "LIB_NVINFER_PLUGIN",
        "libnvonnxparser": "LIB_NVONNXPARSER"}
MODULE_PREFIX = "tensorrt_bindings.tensorrt."
DUMP_FORMAT = 2
# Dunders that decide how an object behaves in plain Python (len(), x[i], iteration, ==, int(x), with ...).
PROTOCOLS = ("__len__", "__getitem__", "__setitem__", "__delitem__", "__iter__", "__next__", "__reversed__",
             "__contains__", "__bool__", "__int__", "__index__", "__float__", "__eq__", "__ne__", "__hash__",
             "__lt__", "__le__", "__gt__", "__ge__", "__add__", "__sub__", "__mul__", "__and__", "__or__",
             "__xor__", "__lshift__", "__rshift__", "__neg__", "__invert__", "__enter__", "__exit__", "__call__",
             "__buffer__")
_Py_bf_getbuffer = 1  # the type slot id of the buffer protocol (Include/typeslots.h)


class BindingsUnavailable(RuntimeError):
    """The wheels cannot be had here (offline, no C compiler): tests skip with this reason."""


class BindingsRequired(RuntimeError):
    """The wheels cannot be had, and this run requires them (CI): tests fail. Not a BindingsUnavailable,
    so that nothing which skips on that catches it."""


def required() -> bool:
    """Whether a missing wheel or compiler fails the tests instead of skipping them: in CI (CI set to
    anything but "", 0, false, no), with LOWFORMER_REQUIRE_TRT_BINDINGS=1, or LOWFORMER_TRT_BINDINGS=required."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return (ci or os.environ.get("LOWFORMER_REQUIRE_TRT_BINDINGS", "").strip() == "1"
            or os.environ.get("LOWFORMER_TRT_BINDINGS") == "required")


def _unavailable(reason: str) -> RuntimeError:
    if required():
        return BindingsRequired(f"{reason} (the real TensorRT bindings are required here: CI or "
                                "LOWFORMER_REQUIRE_TRT_BINDINGS=1; see tests/engines/tensorrt/trt_bindings.py)")
    return BindingsUnavailable(reason)


def protocols_of(cls) -> Dict[str, str]:
    """{dunder of PROTOCOLS: "defined" | "disabled" (set to None)} from the classes of `cls`'s MRO that are
    not `object`, `type` or pybind11's bases (one set to object's own counts as absent); "__buffer__" is
    "defined" when its objects have the buffer protocol (the type slot: Python < 3.12 has no dunder for it)."""
    out: Dict[str, str] = {}
    for name in PROTOCOLS:
        for c in cls.__mro__:
            if c is object or c is type or c.__module__ == "pybind11_builtins":
                continue  # (other builtins stay: a fake deriving from int or bytes gets their protocols)
            if name in vars(c):
                value = vars(c)[name]
                if value is not getattr(object, name, None):  # object's own, restored: as if absent
                    out[name] = "disabled" if value is None else "defined"
                break
    get_slot = ctypes.pythonapi.PyType_GetSlot
    get_slot.restype, get_slot.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_int]
    if get_slot(cls, _Py_bf_getbuffer):
        out["__buffer__"] = "defined"
    return out


def major_of(key: str) -> int:
    return int(VERSIONS[key][1].split(".")[0])


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def wheel(key: str) -> Path:
    """The bindings wheel of version `key`, downloaded once into the cache."""
    dist, version = VERSIONS[key]
    folder = CACHE / "wheels"
    stem = f"{dist.replace('-', '_')}-{version}-{PY_TAG}-"
    found = sorted(folder.glob(stem + "*.whl")) if folder.is_dir() else []
    if found:
        return found[-1]
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "-d", tmp, f"{dist}=={version}"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise _unavailable(f"pip download {dist}=={version} failed: {e}") from None
        got = sorted(Path(tmp).glob(stem + "*.whl"))
        if r.returncode != 0 or not got:
            last = (r.stderr.strip().splitlines() or ["no wheel for " + PY_TAG])[-1]
            raise _unavailable(f"pip download {dist}=={version} ({PY_TAG}) failed (offline?): {last}")
        target = folder / got[0].name
        os.replace(got[0], target)
    return target


def unpacked(key: str) -> Path:
    """The wheel unpacked into its own folder (the folder to put on sys.path), never into the venv."""
    whl = wheel(key)
    folder = CACHE / "unpacked" / whl.stem
    if not (folder / "tensorrt_bindings" / ".complete").is_file():
        tmp = Path(tempfile.mkdtemp(dir=CACHE / "wheels", prefix="unpack-"))
        with zipfile.ZipFile(whl) as z:
            z.extractall(tmp)
        (tmp / "tensorrt_bindings" / ".complete").write_text(whl.name)
        shutil.rmtree(folder, ignore_errors=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, folder)
    return folder


def stubs(major: int) -> Path:
    """Stub libnvinfer/libnvinfer_plugin/libnvonnxparser.so.<major>, compiled once per stub source."""
    src = STUB_SOURCE.read_bytes()
    folder = CACHE / "stubs" / f"{major}-{hashlib.sha256(src).hexdigest()[:12]}"
    if all((folder / f"{lib}.so.{major}").is_file() for lib in LIBS):
        return folder
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise _unavailable("no C compiler (gcc/cc) to build the TensorRT stub libraries")
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE, prefix="stubs-"))
    for lib, define in LIBS.items():
        name = f"{lib}.so.{major}"
        r = subprocess.run([cc, "-shared", "-fPIC", "-O1", f"-D{define}", f"-Wl,-soname,{name}",
                            "-o", str(tmp / name), str(STUB_SOURCE)], capture_output=True, text=True)
        if r.returncode != 0:
            raise _unavailable(f"cannot compile the {name} stub: {r.stderr.strip()[-500:]}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)
    return folder


def api_json(key: str) -> Path:
    """The JSON dump of version `key`'s API (made once per version, stub source and this file)."""
    _, version = VERSIONS[key]
    tag = hashlib.sha256(Path(__file__).read_bytes() + STUB_SOURCE.read_bytes()).hexdigest()[:12]
    out = CACHE / "api" / f"tensorrt-{version}-{tag}.json"
    if out.is_file():
        return out
    pkg, lib_dir = unpacked(key), stubs(major_of(key))
    r = subprocess.run([sys.executable, __file__, "dump", str(lib_dir), str(pkg), str(major_of(key)), str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONNOUSERSITE": "1"})
    if r.returncode != 0 or not out.is_file():
        # the wheel and stubs are here, so this is a real failure, not a reason to skip
        raise RuntimeError(f"dumping the TensorRT {version} API failed:\n{r.stdout}\n{r.stderr}")
    for old in out.parent.glob(f"tensorrt-{version}-*.json"):  # dumps by an older dumper or stub source
        if old != out:
            old.unlink(missing_ok=True)
    return out


def real_api(key: str) -> Dict[str, Any]:
    return json.loads(api_json(key).read_text())


_PRELUDE = """
import ctypes, os, sys
for lib in {libs!r}:
    ctypes.CDLL(os.path.join({lib_dir!r}, lib + ".so.{major}"), mode=ctypes.RTLD_GLOBAL)
sys.path.insert(0, {pkg!r})
import tensorrt_bindings
sys.modules["tensorrt"] = tensorrt_bindings  # what `import tensorrt` gives where TensorRT is installed
"""


def run_with_real_tensorrt(key: str, code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter where `import tensorrt` is the real module of version `key`
    (with the stub libraries: classes, enums and pure-Python subclasses work; anything that reaches
    into libnvinfer, such as trt.Builder(logger), does not)."""
    major = major_of(key)
    prelude = _PRELUDE.format(libs=list(LIBS), lib_dir=str(stubs(major)), major=major, pkg=str(unpacked(key)))
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO), env={**os.environ, "PYTHONNOUSERSITE": "1"})


# --------------------------------------------------------------------------- pybind signature parsing
# (used inside the dump subprocess; pure string work)

_PAIRS = {"(": ")", "[": "]", "{": "}", "<": ">"}


def _split_top(text: str, sep: str = ",") -> List[str]:
    """Split at `sep` outside brackets and quotes (types like Tuple[int, int], defaults like <X.Y: 0>)."""
    out, depth, quote, cur = [], [], None, []
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "-" and text[i:i + 2] == "->":  # not a closing '>'
            cur.append("->")
            i += 2
            continue
        elif c in _PAIRS:
            depth.append(_PAIRS[c])
        elif depth and c == depth[-1]:
            depth.pop()
        elif c == sep and not depth:
            out.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    if "".join(cur).strip():
        out.append("".join(cur))
    return [s.strip() for s in out]


def _norm_type(t: Optional[str]) -> Optional[str]:
    if t is None:
        return None
    return t.strip().replace(MODULE_PREFIX, "").replace("tensorrt.", "")


def parse_params(text: str) -> List[Dict[str, Any]]:
    params, kw_only = [], False
    for p in _split_top(text):
        if not p:
            continue
        if p == "*":
            kw_only = True
            continue
        if p == "/":
            for q in params:
                q["kind"] = "positional_only"
            continue
        if p.startswith("**"):
            params.append({"name": p[2:].split(":")[0].strip(), "kind": "var_keyword", "default": False})
            continue
        if p.startswith("*"):
            params.append({"name": p[1:].split(":")[0].strip(), "kind": "var_positional", "default": False})
            kw_only = True
            continue
        eq = _split_top(p, "=")
        head, has_default = eq[0], len(eq) > 1
        name, _, annotation = head.partition(":")
        name = name.strip()
        kind = "keyword_only" if kw_only else "positional_or_keyword"
        if re.fullmatch(r"arg\d+", name):  # pybind names an argument argN when it was given no py::arg
            kind = "positional_only"
        params.append({"name": name, "kind": kind, "default": has_default,
                       "type": _norm_type(annotation) if annotation else None})
    return params


def parse_signatures(name: str, doc: Optional[str]) -> List[Dict[str, Any]]:
    """Every `name(params) -> ret` line of a pybind docstring (one per overload)."""
    sigs = []
    for line in (doc or "").splitlines():
        line = line.strip()
        m = re.match(rf"(?:\d+\.\s+)?{re.escape(name)}\(", line)
        if not m:
            continue
        start, depth, end = m.end(), 1, None
        for i in range(start, len(line)):
            if line[i] in "([{":
                depth += 1
            elif line[i] in ")]}":
                depth -= 1
                if depth == 0:
                    end = i
                    break
        if end is None:
            continue
        rest = line[end + 1:].strip()
        ret = _norm_type(rest[2:]) if rest.startswith("->") else None
        params_text = line[start:end]
        if params_text.replace(" ", "") == "*args,**kwargs" and "Overloaded function" in (doc or ""):
            continue  # the umbrella line above the numbered overloads
        sigs.append({"params": parse_params(params_text), "returns": ret})
    return sigs


# --------------------------------------------------------------------------- the dump (subprocess)

def _dump(lib_dir: str, pkg_dir: str, major: int, out: str) -> None:
    import inspect

    for lib in LIBS:  # RTLD_GLOBAL first: the module's NEEDED entries then resolve to these sonames
        ctypes.CDLL(os.path.join(lib_dir, f"{lib}.so.{major}"), mode=ctypes.RTLD_GLOBAL)
    sys.path.insert(0, pkg_dir)
    import tensorrt_bindings as trt  # noqa: the real module (its __init__ is what `import tensorrt` runs)

    classes: Dict[str, Any] = {}

    def is_enum(cls) -> bool:
        return isinstance(getattr(cls, "__members__", None), dict) and hasattr(cls, "name")

    def describe_class(qual: str, cls) -> None:
        if qual in classes:
            return
        entry: Dict[str, Any] = {"kind": "class", "bases": [b.__qualname__ for b in cls.__mro__[1:]
                                                             if b.__module__.startswith("tensorrt")],
                                 "enum": is_enum(cls), "members": {}, "protocols": protocols_of(cls),
                                 "class_protocols": protocols_of(type(cls))}
        classes[qual] = entry
        if entry["enum"]:
            entry["values"] = {k: int(v) for k, v in cls.__members__.items()}
        for name in dir(cls):
            if name.startswith("__") and name not in ("__init__", "__call__"):
                continue
            try:
                static = inspect.getattr_static(cls, name)
                value = getattr(cls, name)
            except AttributeError:
                continue
            if isinstance(static, property):
                doc = getattr(static.fget, "__doc__", "") or ""
                m = re.search(r"\((?:self|arg0)[^)]*\)\s*->\s*([^\n]+)", doc)
                entry["members"][name] = {"kind": "property", "writable": static.fset is not None,
                                          "type": _norm_type(m.group(1)) if m else None}
            elif isinstance(static, staticmethod) or type(static).__name__ == "builtin_function_or_method":
                entry["members"][name] = {"kind": "staticmethod",
                                          "signatures": parse_signatures(name, getattr(value, "__doc__", ""))}
            elif inspect.isclass(value):
                nested = f"{qual}.{name}" if value.__qualname__.endswith(name) else value.__qualname__
                entry["members"][name] = {"kind": "class", "ref": nested}
                if value.__module__.startswith("tensorrt"):
                    describe_class(nested, value)
            elif callable(value) and not isinstance(value, cls):
                sigs = parse_signatures(name, getattr(value, "__doc__", ""))
                kind = "method" if type(static).__name__ in ("instancemethod", "function", "method_descriptor",
                                                               "wrapper_descriptor") else "callable"
                entry["members"][name] = {"kind": kind, "signatures": sigs}
            else:
                entry["members"][name] = {"kind": "value", "type": type(value).__qualname__}

    module: Dict[str, Any] = {}
    for name in dir(trt):
        if name.startswith("__") and name != "__version__":
            continue
        value = getattr(trt, name)
        if inspect.isclass(value) and value.__module__.startswith("tensorrt"):
            module[name] = {"kind": "class", "ref": value.__qualname__}
            describe_class(value.__qualname__, value)
        elif inspect.ismodule(value):
            module[name] = {"kind": "module"}
        elif callable(value) and not inspect.isclass(value):
            module[name] = {"kind": "function", "signatures": parse_signatures(name, getattr(value, "__doc__", ""))}
        else:
            module[name] = {"kind": "value", "type": type(value).__qualname__}
    data = {"format": DUMP_FORMAT, "version": trt.__version__, "major": major, "python_tag": PY_TAG,
            "package_dir": pkg_dir, "module": module, "classes": classes}
    _atomic_write(Path(out), json.dumps(data, indent=1, sort_keys=True).encode())


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "dump":
        _dump(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        for k in VERSIONS:
            print(k, api_json(k))
