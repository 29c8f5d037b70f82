"""Modules that are also their command's API function.

`lowformer.export`, `lowformer.validate`, `lowformer.explain`, `lowformer.bench`, `lowformer.sweep` and
`lowformer.report` are functions of the public API (lowformer.api) and modules of the package: importing the module
makes Python set the package attribute to the module, hiding the function. Such a module calls
`callable_as_command(__name__)` last, which makes the module object itself callable, forwarding to
the API function of the same name: `lowformer.validate(...)` works whichever of the two it is.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class CommandModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        api = importlib.import_module("lowformer.api")  # by name: the API sits above every module
        return getattr(api, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def callable_as_command(module_name: str) -> None:
    """Make the module `module_name` (e.g. "lowformer.validate") call lowformer.api's function of its name."""
    sys.modules[module_name].__class__ = CommandModule
