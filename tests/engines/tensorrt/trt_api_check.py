"""Static check of lowformer's TensorRT calls against one real TensorRT API dump (trt_bindings.py, beside it).

Which names are TensorRT names, read from the code's AST (no hand list):
  * the module: a name bound by `import tensorrt as X`, by a call of a function that returns the module
    (`_import_trt()`), a parameter named `trt`, or an attribute assigned from one (`self._trt = trt`);
  * attribute chains on it: `trt.BuilderFlag.FP16` is member FP16 of class BuilderFlag;
  * objects from TensorRT: `trt.C(...)` is a C; `obj.m(...)` with obj a C is whatever the real `C.m`
    returns (its pybind signature, in the version checked); `obj.p` with p a property is the property's
    type. Types flow through assignments, `self.attr = ...` (seen by every method of the class), string
    annotations ("trt.C"), and call arguments into the functions and classes of the checked files;
  * subclasses of `trt.C` (ILogger, IProfiler): a method they define that C has is an override whose
    parameters must match C's; a public method C lacks but whose name is close to one of C's is reported
    as a misspelt override (TensorRT would never call it). Override parameters get C's parameter types.

Checked for every use: the name exists; a call passes a positional count and keyword names that one of
the real overloads accepts; an assigned attribute is a writable property; an attribute of a TensorRT
object read as a value is not a method (ErrorCode.name is a method before TensorRT 10.16).
`getattr(obj, name)` on a TensorRT object with a non-literal name is reported: such a name cannot be checked.

Version guards the checker understands (code outside a guard's range is not checked for that version):
  `if major < 11:` / `>=` / `>` / `<=` / `==` / `!=`, where `major` was assigned from `trt_major(...)`
  (or that call itself), with its `else`; `hasattr(X, "name")` (then X.name may be missing);
  `and` of these, in `if` statements, conditional expressions and `and` chains.
"""
from __future__ import annotations

import ast
import difflib
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

MODULE = ("module",)
MAJOR = ("major",)
_OPS = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}
_FLIP = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.Eq: ast.Eq, ast.NotEq: ast.NotEq}
_NEG = {ast.Lt: ast.GtE, ast.LtE: ast.Gt, ast.Gt: ast.LtE, ast.GtE: ast.Lt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Use:
    """One TensorRT name the code uses (owner '' is the module)."""

    file: str
    line: int
    owner: str
    name: str
    how: str  # get | call | set | override

    @property
    def qualname(self) -> str:
        return f"{self.owner}.{self.name}" if self.owner else self.name


@dataclass
class _Ctx:
    file: str
    majors: Tuple[Tuple[Any, int], ...] = ()  # (comparison, N): the code runs only where major <cmp> N
    has: Tuple[Tuple[Any, str], ...] = ()  # (kind of X, name): hasattr(X, name) holds here

    def with_guards(self, majors=(), has=()) -> "_Ctx":
        return _Ctx(self.file, self.majors + tuple(majors), self.has + tuple(has))


class Api:
    """One TensorRT version's classes and module members, from the JSON dump."""

    def __init__(self, dump: Dict[str, Any]):
        self.version: str = dump["version"]
        self.major: int = int(dump["major"])
        self.module: Dict[str, Any] = dump["module"]
        self.classes: Dict[str, Any] = dump["classes"]

    def resolve(self, type_name: Optional[str]) -> Optional[str]:
        """A class qualname from a signature's type ('IHostMemory', 'nvonnxparser::IParserError')."""
        if not type_name:
            return None
        t = type_name.strip().strip("'\"")
        if t.startswith("Optional[") and t.endswith("]"):
            t = t[len("Optional["):-1]
        t = t.split("|")[0].strip().split("::")[-1]
        for cand in (t, t[1:] if t.startswith("I") else None):
            if cand and cand in self.classes:
                return cand
        return None

    def member(self, owner: str, name: str) -> Optional[Dict[str, Any]]:
        if not owner:
            return self.module.get(name)
        cls = self.classes.get(owner)
        return None if cls is None else cls["members"].get(name)


# --------------------------------------------------------------------------- argument matching

def accepts(sig: Dict[str, Any], npos: int, keywords: Iterable[str], drop_self: bool) -> bool:
    params = list(sig["params"])
    if drop_self and params and params[0]["kind"] != "var_positional":
        params = params[1:]
    positional = [p for p in params if p["kind"] in ("positional_only", "positional_or_keyword")]
    var_pos = any(p["kind"] == "var_positional" for p in params)
    var_kw = any(p["kind"] == "var_keyword" for p in params)
    if npos > len(positional) and not var_pos:
        return False
    filled = {p["name"] for p in positional[:npos]}
    by_name = {p["name"]: p for p in params}
    for k in keywords:
        p = by_name.get(k)
        if p is None or p["kind"] in ("positional_only", "var_positional", "var_keyword"):
            if var_kw:
                continue
            return False
        if k in filled:
            return False
        filled.add(k)
    return all(p["default"] or p["name"] in filled for p in params
               if p["kind"] in ("positional_only", "positional_or_keyword", "keyword_only"))


def _sig_text(sig: Dict[str, Any]) -> str:
    return "(" + ", ".join(p["name"] + ("=..." if p["default"] else "") for p in sig["params"]) + ")"


# --------------------------------------------------------------------------- the checker

class _Func:
    def __init__(self, node: ast.AST, file: str, cls: Optional["_Class"]):
        self.node, self.file, self.cls = node, file, cls
        self.param_kinds: Dict[str, Any] = {}
        self.returns: Any = None

    @property
    def params(self) -> List[str]:
        a = self.node.args
        return [p.arg for p in a.posonlyargs + a.args]

    @property
    def is_method(self) -> bool:
        decos = [d.id for d in self.node.decorator_list if isinstance(d, ast.Name)]
        return self.cls is not None and "staticmethod" not in decos


class _Class:
    def __init__(self, node: ast.ClassDef, file: str):
        self.node, self.file = node, file
        self.attrs: Dict[str, Any] = {}
        self.methods: Dict[str, _Func] = {}
        self.trt_base: Optional[str] = None


class Checker:
    def __init__(self, api: Api, sources: Dict[str, str]):
        self.api, self.sources = api, sources
        self.trees = {f: ast.parse(src, f) for f, src in sources.items()}
        self.funcs: Dict[str, List[_Func]] = {}  # by name, module level (and nested defs)
        self.classes: Dict[str, _Class] = {}
        self.func_of: Dict[ast.AST, _Func] = {}
        for f, tree in self.trees.items():
            self._index(tree, f, None)
        self.problems: List[Problem] = []
        self.uses: List[Use] = []
        self._record = False

    def _index(self, node: ast.AST, file: str, cls: Optional[_Class]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                c = _Class(child, file)
                self.classes[child.name] = c
                self._index(child, file, c)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                fn = _Func(child, file, cls)
                self.func_of[child] = fn
                if cls is not None and node is cls.node:
                    cls.methods[child.name] = fn
                else:
                    self.funcs.setdefault(child.name, []).append(fn)
                self._index(child, file, None)
            else:
                self._index(child, file, cls)

    # ------------------------------------------------------------------ driver
    def run(self) -> List[Problem]:
        for _ in range(4):  # types flow between functions: a few passes reach the fixpoint here
            self._pass()
        self._record = True
        self._pass()
        seen, out = set(), []
        for p in self.problems:
            if p not in seen:
                seen.add(p)
                out.append(p)
        self.problems = out
        self.uses = list(dict.fromkeys(self.uses))
        return self.problems

    def _pass(self) -> None:
        for f, tree in self.trees.items():
            self._block(tree.body, {}, _Ctx(f), None)

    def _problem(self, ctx: _Ctx, node: ast.AST, msg: str) -> None:
        if self._record:
            self.problems.append(Problem(ctx.file, getattr(node, "lineno", 0), msg))

    # ------------------------------------------------------------------ guards
    def _in_range(self, ctx: _Ctx) -> bool:
        return all(_OPS[op](self.api.major, n) for op, n in ctx.majors)

    def _guards(self, test: ast.AST, env: Dict[str, Any], ctx: _Ctx, evaluate: bool = True):
        """(guards that hold when `test` is true, guards that hold when it is false)."""
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
            majors, has, inner = [], [], ctx
            for v in test.values:
                (m, h), _ = self._guards(v, env, inner, evaluate)
                majors += m
                has += h
                inner = inner.with_guards(m, h)
            return (majors, has), ([], [])
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            pos, neg = self._guards(test.operand, env, ctx, evaluate)
            return neg, pos
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _OPS:
            left, right, op = test.left, test.comparators[0], type(test.ops[0])
            if evaluate:
                lk, rk = self._expr(left, env, ctx), self._expr(right, env, ctx)
            else:
                lk = rk = None
            lk = lk or self._static_kind(left, env)
            rk = rk or self._static_kind(right, env)
            if lk == MAJOR and isinstance(right, ast.Constant) and isinstance(right.value, int):
                return ([(op, right.value)], []), ([(_NEG[op], right.value)], [])
            if rk == MAJOR and isinstance(left, ast.Constant) and isinstance(left.value, int):
                return ([(_FLIP[op], left.value)], []), ([(_NEG[_FLIP[op]], left.value)], [])
            return ([], []), ([], [])
        if (isinstance(test, ast.Call) and isinstance(test.func, ast.Name) and test.func.id == "hasattr"
                and len(test.args) == 2 and isinstance(test.args[1], ast.Constant)):
            kind = self._expr(test.args[0], env, ctx) if evaluate else self._static_kind(test.args[0], env)
            return ([], [(kind, test.args[1].value)]), ([], [])
        if evaluate:
            self._expr(test, env, ctx)
        return ([], []), ([], [])

    def _static_kind(self, node: ast.AST, env: Dict[str, Any]) -> Any:
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "trt_major":
            return MAJOR
        return None

    # ------------------------------------------------------------------ statements
    def _block(self, body: List[ast.stmt], env: Dict[str, Any], ctx: _Ctx, fn: Optional[_Func]) -> None:
        for stmt in body:
            self._stmt(stmt, env, ctx, fn)

    def _stmt(self, s: ast.stmt, env: Dict[str, Any], ctx: _Ctx, fn: Optional[_Func]) -> None:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self._function(self.func_of[s], env, ctx)
        elif isinstance(s, ast.ClassDef):
            self._class(s, env, ctx)
        elif isinstance(s, (ast.Import, ast.ImportFrom)):
            for a in s.names:
                if isinstance(s, ast.Import) and a.name == "tensorrt":
                    env[a.asname or a.name] = MODULE
        elif isinstance(s, ast.Assign):
            pairwise = (len(s.targets) == 1 and isinstance(s.targets[0], ast.Tuple) and isinstance(s.value, ast.Tuple)
                        and len(s.targets[0].elts) == len(s.value.elts))
            if pairwise:  # a, b = x, y
                kinds = [self._expr(v, env, ctx) for v in s.value.elts]
                for t, kind in zip(s.targets[0].elts, kinds):
                    self._target(t, kind, env, ctx, fn)
                return
            kind = self._expr(s.value, env, ctx)
            for t in s.targets:
                if isinstance(t, ast.Name) and isinstance(s.value, ast.Constant) and s.value.value is None:
                    continue  # `x = None` (a failure path) keeps what x is otherwise
                self._target(t, kind, env, ctx, fn)
        elif isinstance(s, ast.AnnAssign):
            kind = self._expr(s.value, env, ctx) if s.value is not None else None
            kind = kind or self._annotation_kind(s.annotation)
            self._target(s.target, kind, env, ctx, fn)
        elif isinstance(s, ast.AugAssign):
            self._expr(s.value, env, ctx)
            self._expr(s.target, env, ctx)
        elif isinstance(s, ast.If):
            (bm, bh), (em, eh) = self._guards(s.test, env, ctx)
            self._block(s.body, env, ctx.with_guards(bm, bh), fn)
            self._block(s.orelse, env, ctx.with_guards(em, eh), fn)
        elif isinstance(s, ast.Return):
            if s.value is not None:
                kind = self._expr(s.value, env, ctx)
                if fn is not None and kind is not None:
                    fn.returns = kind
        elif isinstance(s, (ast.For, ast.AsyncFor)):
            self._expr(s.iter, env, ctx)
            self._target(s.target, None, env, ctx, fn)
            self._block(s.body, env, ctx, fn)
            self._block(s.orelse, env, ctx, fn)
        elif isinstance(s, ast.While):
            self._expr(s.test, env, ctx)
            self._block(s.body, env, ctx, fn)
            self._block(s.orelse, env, ctx, fn)
        elif isinstance(s, (ast.With, ast.AsyncWith)):
            for item in s.items:
                kind = self._expr(item.context_expr, env, ctx)
                if item.optional_vars is not None:
                    self._target(item.optional_vars, kind, env, ctx, fn)
            self._block(s.body, env, ctx, fn)
        elif isinstance(s, ast.Try) or type(s).__name__ == "TryStar":
            self._block(s.body, env, ctx, fn)
            for h in s.handlers:
                if h.type is not None:
                    self._expr(h.type, env, ctx)
                self._block(h.body, env, ctx, fn)
            self._block(s.orelse, env, ctx, fn)
            self._block(s.finalbody, env, ctx, fn)
        else:
            for child in ast.iter_child_nodes(s):
                if isinstance(child, ast.expr):
                    self._expr(child, env, ctx)

    def _target(self, t: ast.AST, kind: Any, env: Dict[str, Any], ctx: _Ctx, fn: Optional[_Func]) -> None:
        if isinstance(t, ast.Name):
            if kind is not None:
                env[t.id] = kind
            else:
                env.pop(t.id, None)
        elif isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                self._target(e, None, env, ctx, fn)
        elif isinstance(t, ast.Attribute):
            if isinstance(t.value, ast.Name) and t.value.id == "self" and fn is not None and fn.cls is not None:
                if kind is not None or t.attr not in fn.cls.attrs:
                    fn.cls.attrs[t.attr] = kind  # our own attribute (None: not a TensorRT object)
                return
            base = self._expr(t.value, env, ctx)
            self._attr_use(base, t.attr, t, ctx, "set")
        elif isinstance(t, ast.Subscript):
            self._expr(t.value, env, ctx)
            self._expr(t.slice, env, ctx)

    def _annotation_kind(self, ann: Optional[ast.AST]) -> Any:
        if isinstance(ann, ast.Constant) and isinstance(ann.value, str) and ann.value.startswith("trt."):
            q = self.api.resolve(ann.value[4:])
            return ("inst", q) if q else None
        return None

    def _function(self, fn: _Func, outer: Dict[str, Any], ctx: _Ctx) -> None:
        env = dict(outer)  # closures see the enclosing names (e.g. `trt` in _Logger.create)
        a = fn.node.args
        for p in a.posonlyargs + a.args + a.kwonlyargs:
            kind = self._annotation_kind(p.annotation) or fn.param_kinds.get(p.arg)
            if p.arg == "trt":
                kind = MODULE
            if fn.is_method and fn.cls is not None and p is (a.posonlyargs + a.args)[0]:
                kind = ("ours", fn.cls.node.name)
            if kind is not None:
                env[p.arg] = kind
            else:
                env.pop(p.arg, None)
        for d in fn.node.decorator_list:
            self._expr(d, outer, ctx)
        self._block(fn.node.body, env, ctx, fn)

    def _class(self, node: ast.ClassDef, env: Dict[str, Any], ctx: _Ctx) -> None:
        cls = self.classes[node.name]
        for b in node.bases:
            kind = self._expr(b, env, ctx)
            if isinstance(kind, tuple) and kind[0] == "class":
                cls.trt_base = kind[1]
        if cls.trt_base is not None:
            self._overrides(cls, ctx)
        self._block(node.body, env, ctx, None)

    def _overrides(self, cls: _Class, ctx: _Ctx) -> None:
        base = self.api.classes.get(cls.trt_base, {"members": {}})["members"]
        base_methods = [n for n, m in base.items() if m["kind"] == "method"]
        for name, fn in cls.methods.items():
            if name.startswith("__"):
                continue
            m = base.get(name)
            if m is not None and m["kind"] == "method":
                if self._record:
                    self.uses.append(Use(ctx.file, fn.node.lineno, cls.trt_base, name, "override"))
                mine = len(fn.params) - 1
                sigs = m.get("signatures") or []
                if sigs and not any(len(s["params"]) - 1 == mine for s in sigs):
                    self._problem(ctx, fn.node, f"{cls.node.name}.{name} overrides TensorRT {self.api.version} "
                                                f"{cls.trt_base}.{name}{_sig_text(sigs[0])} with {mine} parameters")
                if sigs:  # override parameters get the real parameter types
                    for p, rp in zip(fn.params[1:], sigs[0]["params"][1:]):
                        q = self.api.resolve(rp.get("type"))
                        if q:
                            fn.param_kinds[p] = ("inst", q)
            elif m is None and not name.startswith("_"):
                close = difflib.get_close_matches(name, base_methods, n=1, cutoff=0.8)
                if close:
                    self._problem(ctx, fn.node, f"{cls.node.name}.{name} looks like a misspelt override of TensorRT "
                                                f"{self.api.version} {cls.trt_base}.{close[0]} (TensorRT never calls it)")

    # ------------------------------------------------------------------ expressions
    def _owner(self, kind: Any) -> Optional[str]:
        if kind == MODULE:
            return ""
        if isinstance(kind, tuple) and kind[0] in ("class", "inst"):
            return kind[1]
        return None

    def _allowed_missing(self, kind: Any, name: str, ctx: _Ctx) -> bool:
        return any(k == kind and n == name for k, n in ctx.has)

    def _lookup(self, kind: Any, name: str, node: ast.AST, ctx: _Ctx, how: str) -> Optional[Dict[str, Any]]:
        """The real member `name` of `kind`, recording the use; None (and maybe a problem) if absent."""
        owner = self._owner(kind)
        if owner is None or not self._in_range(ctx):
            return None
        m = self.api.member(owner, name)
        if self._record:
            self.uses.append(Use(ctx.file, getattr(node, "lineno", 0), owner, name, how))
        if m is None and not self._allowed_missing(kind, name, ctx):
            where = f"{owner}.{name}" if owner else f"tensorrt.{name}"
            self._problem(ctx, node, f"{where} does not exist in TensorRT {self.api.version}")
        return m

    def _kind_of_member(self, owner: str, m: Dict[str, Any]) -> Any:
        if m["kind"] == "class":
            return ("class", m["ref"])
        if m["kind"] == "property":
            q = self.api.resolve(m.get("type"))
            return ("inst", q) if q else None
        if m["kind"] == "value" and owner and m.get("type") == owner.split(".")[-1]:
            return ("inst", owner)  # an enum member
        if m["kind"] == "module":
            return None
        return None

    def _attr_use(self, base: Any, name: str, node: ast.AST, ctx: _Ctx, how: str) -> Any:
        if base is not None and base[0] == "ours":
            cls = self.classes.get(base[1])
            if cls is not None:
                if name in cls.attrs:
                    return cls.attrs[name]
                if how != "set" and cls.trt_base is not None and name not in cls.methods:
                    return self._attr_use(("inst", cls.trt_base), name, node, ctx, how)
            return None
        m = self._lookup(base, name, node, ctx, how)
        if m is None:
            return None
        if how == "set" and not (m["kind"] == "property" and m.get("writable")):
            self._problem(ctx, node, f"{self._owner(base)}.{name} is not a writable property in TensorRT "
                                     f"{self.api.version}")
        if how == "get" and base[0] == "inst" and m["kind"] == "method":
            # e.g. ErrorCode.name: a method before TensorRT 10.16, a property after; uncalled it is a bound method
            self._problem(ctx, node, f"{self._owner(base)}.{name} is a method in TensorRT {self.api.version}, not a "
                                     "value: read without a call it is a bound method")
        return self._kind_of_member(self._owner(base), m)

    def _check_call(self, owner: str, name: str, m: Dict[str, Any], call: ast.Call, ctx: _Ctx,
                    drop_self: bool) -> Any:
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            self._problem(ctx, call, f"{owner + '.' if owner else ''}{name} is called with *args/**kwargs: "
                                     "spell the arguments out so they can be checked")
            return None
        sigs = m.get("signatures") or []
        if not sigs:
            self._problem(ctx, call, f"{owner}.{name} has no signature in TensorRT {self.api.version}'s docstrings")
            return None
        npos, kws = len(call.args), [k.arg for k in call.keywords]
        ok = [s for s in sigs if accepts(s, npos, kws, drop_self)]
        if not ok:
            shown = " | ".join(_sig_text(s) for s in sigs)
            args = ", ".join(["_"] * npos + [f"{k}=" for k in kws])
            self._problem(ctx, call, f"{owner + '.' if owner else ''}{name}({args}) matches no signature of "
                                     f"TensorRT {self.api.version}: {shown}")
            return None
        q = self.api.resolve(ok[0].get("returns"))
        return ("inst", q) if q else None

    def _expr(self, node: Optional[ast.AST], env: Dict[str, Any], ctx: _Ctx) -> Any:
        if node is None:
            return None
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._expr(node.value, env, ctx)
            return self._attr_use(base, node.attr, node, ctx, "get")
        if isinstance(node, ast.Call):
            return self._call(node, env, ctx)
        if isinstance(node, ast.IfExp):
            (bm, bh), (em, eh) = self._guards(node.test, env, ctx)
            a = self._expr(node.body, env, ctx.with_guards(bm, bh))
            b = self._expr(node.orelse, env, ctx.with_guards(em, eh))
            return a if a == b else None
        if isinstance(node, ast.BoolOp):
            inner = ctx
            for v in node.values:
                if isinstance(node.op, ast.And):
                    (m, h), _ = self._guards(v, env, inner)
                    inner = inner.with_guards(m, h)
                else:
                    self._expr(v, env, inner)
            return None
        if isinstance(node, (ast.Lambda,)):
            return None
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner_env = dict(env)
            for gen in node.generators:
                self._expr(gen.iter, inner_env, ctx)
                for n in ast.walk(gen.target):
                    if isinstance(n, ast.Name):
                        inner_env.pop(n.id, None)
                for cond in gen.ifs:
                    self._expr(cond, inner_env, ctx)
            if isinstance(node, ast.DictComp):
                self._expr(node.key, inner_env, ctx)
                self._expr(node.value, inner_env, ctx)
            else:
                self._expr(node.elt, inner_env, ctx)
            return None
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self._expr(child, env, ctx)
            elif isinstance(child, ast.keyword):
                self._expr(child.value, env, ctx)
            elif isinstance(child, ast.comprehension):
                self._expr(child.iter, env, ctx)
        return None

    def _call(self, call: ast.Call, env: Dict[str, Any], ctx: _Ctx) -> Any:
        f = call.func
        arg_kinds = [self._expr(a.value if isinstance(a, ast.Starred) else a, env, ctx) for a in call.args]
        kw_kinds = {k.arg: self._expr(k.value, env, ctx) for k in call.keywords}
        if isinstance(f, ast.Name):
            if f.id == "trt_major":
                return MAJOR
            if f.id in ("getattr", "hasattr") and len(call.args) >= 2:
                base = arg_kinds[0]
                if self._owner(base) is None:
                    return None
                lit = call.args[1]
                if isinstance(lit, ast.Constant) and isinstance(lit.value, str):
                    if f.id == "hasattr":
                        return None
                    if len(call.args) >= 3:  # getattr with a default: a missing name is handled
                        return self._attr_use(base, lit.value, call, ctx.with_guards(has=[(base, lit.value)]), "get")
                    return self._attr_use(base, lit.value, call, ctx, "get")
                self._problem(ctx, call, f"{f.id}() on a TensorRT object with a computed name: write the "
                                         "attribute out so that it can be checked")
                return None
            kind = env.get(f.id)
            if kind is None:
                return self._local_call(f.id, call, arg_kinds, kw_kinds, env, ctx)
            return self._call_kind(kind, call, ctx, arg_kinds, kw_kinds)
        if isinstance(f, ast.Attribute):
            if isinstance(f.value, ast.Name) and f.value.id not in env and f.value.id in self.classes:
                meth = self.classes[f.value.id].methods.get(f.attr)  # OurClass.static_or_class_method(...)
                if meth is not None:
                    self._bind(meth, arg_kinds, kw_kinds, skip=0)
                    return meth.returns
                return None
            base = self._expr(f.value, env, ctx)
            if base is not None and base[0] == "ours":
                cls = self.classes.get(base[1])
                if cls is not None and f.attr in cls.methods:
                    meth = cls.methods[f.attr]
                    self._bind(meth, arg_kinds, kw_kinds, skip=1 if meth.is_method else 0)
                    return meth.returns
                if cls is not None and cls.trt_base is not None and f.attr not in cls.attrs:
                    base = ("inst", cls.trt_base)
                else:
                    return None
            owner = self._owner(base)
            if owner is None:
                return None
            m = self._lookup(base, f.attr, f, ctx, "call")
            if m is None:
                return None
            if m["kind"] == "class":
                return self._construct(m["ref"], call, ctx)
            if m["kind"] not in ("method", "staticmethod", "function", "callable"):
                self._problem(ctx, call, f"{owner}.{f.attr} is not callable in TensorRT {self.api.version}")
                return None
            drop_self = base[0] == "inst" and m["kind"] in ("method", "callable")
            return self._check_call(owner, f.attr, m, call, ctx, drop_self)
        self._expr(f, env, ctx)
        return None

    def _call_kind(self, kind: Any, call: ast.Call, ctx: _Ctx, arg_kinds, kw_kinds) -> Any:
        if isinstance(kind, tuple) and kind[0] == "class":
            return self._construct(kind[1], call, ctx)
        if isinstance(kind, tuple) and kind[0] == "ours":  # cls(...) in a classmethod
            return self._local_call(kind[1], call, arg_kinds, kw_kinds, {}, ctx)
        return None

    def _construct(self, qual: str, call: ast.Call, ctx: _Ctx) -> Any:
        if not self._in_range(ctx):
            return ("inst", qual)
        init = self.api.member(qual, "__init__")
        if init is not None and init.get("signatures"):
            self._check_call(qual, "__init__", init, call, ctx, drop_self=True)
        return ("inst", qual)

    def _local_call(self, name: str, call: ast.Call, arg_kinds, kw_kinds, env, ctx) -> Any:
        if name in self.classes:  # one of our classes: its __init__ gets the argument types
            cls = self.classes[name]
            init = cls.methods.get("__init__")
            if init is not None:
                self._bind(init, arg_kinds, kw_kinds, skip=1)
            return ("ours", name)
        if name == "cls":
            return None
        fns = self.funcs.get(name, [])
        kinds = set()
        for fn in fns:
            self._bind(fn, arg_kinds, kw_kinds, skip=1 if fn.is_method else 0)
            kinds.add(fn.returns)
        return kinds.pop() if len(kinds) == 1 else None

    def _bind(self, fn: _Func, arg_kinds, kw_kinds, skip: int) -> None:
        params = fn.params[skip:]
        for p, k in zip(params, arg_kinds):
            if k is not None and k != ("ours", None):
                fn.param_kinds.setdefault(p, k)
        for name, k in kw_kinds.items():
            if name is not None and k is not None:
                fn.param_kinds.setdefault(name, k)


def check_sources(api: Api, sources: Dict[str, str]) -> Tuple[List[Problem], List[Use]]:
    c = Checker(api, sources)
    problems = c.run()
    return problems, c.uses


def check_tree(api: Api, root: Path, base: Optional[Path] = None) -> Tuple[List[Problem], List[Use]]:
    """Check every .py file under `root` (paths in problems are relative to `base`)."""
    base = base or root
    sources = {str(p.relative_to(base)): p.read_text() for p in sorted(root.rglob("*.py"))}
    return check_sources(api, sources)
