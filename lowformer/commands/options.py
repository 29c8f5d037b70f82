"""Options of the commands: values parsed from text (lists, JSON, KEY=VALUE, triplets; errors name
the flag), choices and help from the backend registry, and the click options several commands share."""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import click

from lowformer.core.errors import LowformerError
from lowformer.training.recipe import parse_recipe_value


def parse_triplet(text: Optional[str], what: str) -> Optional[Tuple[float, float, float]]:
    """'0.485,0.456,0.406' -> a 3-tuple of floats (for --mean/--std)."""
    if text is None:
        return None
    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise LowformerError(f"{what} needs three comma-separated numbers, got {text!r}")
    return vals  # type: ignore[return-value]


def parse_sizes(text: str, what: str = "--image-sizes") -> Tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise LowformerError(f"{what} must be comma-separated integers, e.g. 128,160,192,224") from None
    if not sizes or any(s < 16 for s in sizes):
        raise LowformerError(f"{what} must list sizes of at least 16 pixels")
    return sizes


def parse_json_object(text: Optional[str], what: str) -> Dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise LowformerError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise LowformerError(f"{what} must be a JSON object, e.g. '{{\"drop_rate\": 0.1}}'")
    return value


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """`KEY=VALUE` strings (repeatable `--set`) to recipe overrides."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise LowformerError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_recipe_value(key.strip(), value)
    return out


class RegistryChoice(click.Choice):
    """A choice whose values come from the backend registry when the command runs (so a backend
    registered after import, a plugin or a test's, is offered too)."""

    def __init__(self, values: Callable[[], List[str]]):
        self._values = values
        super().__init__([])

    @property
    def choices(self) -> Sequence[str]:  # type: ignore[override]
        return tuple(self._values())

    @choices.setter
    def choices(self, _: Sequence[str]) -> None:
        pass


def export_targets() -> List[str]:
    """`export --to` values: the registered writers (imported when asked, so `--help` stays fast)."""
    from lowformer.engines import registry

    return registry.export_targets()


# Shared options, built once. Their help names what the backend registry holds when `--help` is shown
# (so the registry is imported then, not when the CLI is).

PRECISION_NOTES = {"bf16": "AMX/AVX-512-BF16 CPUs"}  # what a precision setting needs of the machine


def _either(names: Sequence[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    names = list(names)
    return names[0] if len(names) < 2 else f"{', '.join(names[:-1])} or {names[-1]}"


def runtime_help() -> str:
    """`--runtime`: the runtimes the registry lets a user choose, and what each runs besides its own."""
    from lowformer.engines import registry

    names = []
    for name in registry.choosable_runtimes():
        b = registry.get(name)
        names.append(f"{name} ({' and '.join(f.upper() for f in b.runs_also)} through {b.title})" if b.runs_also
                     else name)
    return f"auto (each format's own), {_either(names)}; repeat for several."


def precision_help() -> str:
    """`--precision`: every inference-precision setting of the registered backends, default first."""
    from lowformer.engines import registry

    backends = [b for b in registry.all_backends() if b.inference_precisions]
    default = backends[0].inference_precisions[0] if backends else None
    settings = [f"{p} (default)" if p == default else f"{p} ({PRECISION_NOTES[p]})" if p in PRECISION_NOTES else p
                for p in registry.inference_precisions()]
    titles = _either([b.title or b.name for b in backends])
    return f"{titles} inference precision: {_either(settings)}; repeat for several."


class RegistryHelpOption(click.Option):
    """An option whose help text is written by a function when `--help` is shown."""

    def __init__(self, *args: Any, help_from: Callable[[], str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.help_from = help_from

    def get_help_record(self, ctx: click.Context):
        self.help = self.help_from()
        return super().get_help_record(ctx)


def runtime_options(fn: Callable) -> Callable:
    """`--runtime RUNTIME` and `--precision PRECISION` (repeatable): validate, profile and bench."""
    fn = click.option("--precision", "precisions", multiple=True, metavar="PRECISION", cls=RegistryHelpOption,
                      help_from=precision_help)(fn)
    return click.option("--runtime", "runtimes", multiple=True, metavar="RUNTIME", cls=RegistryHelpOption,
                        help_from=runtime_help)(fn)


def json_option(help: str = "Print JSON to stdout.") -> Callable[[Callable], Callable]:
    """`--json` (the parameter `as_json`): the command prints JSON to stdout, human output to stderr."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def options_into(dest: str, group: type) -> Callable[[Callable], Callable]:
    """The values of options declared elsewhere on the command reach it as one argument `dest`: an
    instance of the dataclass `group`, whose fields are those options' parameter names (for options
    that are not next to each other in --help; `option_group` declares its own, in a row). Put it
    under the click decorators, right above the function."""
    names = [f.name for f in dataclasses.fields(group)]

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[dest] = group(**{n: kwargs.pop(n) for n in names})
            return fn(*args, **kwargs)

        return wrapper

    return decorate


def option_group(dest: str, group: type, *options: Callable[[Callable], Callable]) -> Callable:
    """Click options (in the order given) whose values reach the command as one argument `dest`:
    an instance of the dataclass `group`, whose fields are the options' parameter names."""

    def decorate(fn: Callable) -> Callable:
        wrapper = options_into(dest, group)(fn)
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """`--device`, `--threads`, `--runtime`, `--precision` (validate, profile, bench)."""

    device: str
    threads: Optional[int]
    runtimes: Tuple[str, ...]
    precisions: Tuple[str, ...]

    def fields(self) -> Dict[str, Any]:
        """Keywords of lowformer.engines.config.RunConfig."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """`--image-size` and `--checkpoint` of MODEL arguments (profile, bench)."""

    image_size: int
    checkpoint: Optional[str]

    def fields(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)
