"""Typed configs (ONNX Runtime quantization's style): one frozen dataclass per concern instead of
long keyword lists, built from another config, a mapping, or flat keywords.

`Config.build(value, **fields)` routes each keyword to the field of that name, or, for a config
made of smaller ones (a `ValidateConfig` holding a `DataConfig`), to the nested config that has a
field of that name, so a call like `validate(paths, data, limit=100, runtimes=("openvino",))` still
reads as before while the function takes one typed object. Unknown keywords are one LowformerError.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Mapping, Type, TypeVar, Union

from lowformer.core.errors import LowformerError

C = TypeVar("C", bound="Config")


def _nested_types(cls: type) -> Dict[str, type]:
    """field name -> Config subclass, for the fields of `cls` that are configs themselves."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if isinstance(hints.get(f.name), type) and issubclass(hints[f.name], Config)}


class Config:
    """Base of the typed configs (subclasses are frozen dataclasses)."""

    @classmethod
    def build(cls: Type[C], value: Union[C, Mapping[str, Any], None] = None, **fields: Any) -> C:
        if isinstance(value, cls):
            data: Dict[str, Any] = {f.name: getattr(value, f.name) for f in dataclasses.fields(cls)}
        else:
            data = dict(value or {})
        nested = _nested_types(cls)
        own = {f.name for f in dataclasses.fields(cls)}
        routed: Dict[str, Dict[str, Any]] = {name: {} for name in nested}
        for key, val in {**data, **fields}.items():
            if key in own and not (key in nested and not isinstance(val, (Config, Mapping, type(None)))):
                data[key] = val
                continue
            owner = next((name for name, t in nested.items() if key in {f.name for f in dataclasses.fields(t)}), None)
            if owner is None:
                raise LowformerError(f"unknown option {key!r} (known: {', '.join(sorted(cls.option_names()))})")
            routed[owner][key] = val
            data.pop(key, None)
        for name, t in nested.items():
            base = data.get(name)
            data[name] = t.build(base if base is not None else None, **routed[name])
        return cls(**data)  # type: ignore[call-arg]

    @classmethod
    def option_names(cls) -> set:
        """Every keyword `build` takes: own fields and those of nested configs."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for t in _nested_types(cls).values():
            names |= t.option_names()
        return names

    def replace(self: C, **fields: Any) -> C:
        return dataclasses.replace(self, **fields)  # type: ignore[type-var]

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]
