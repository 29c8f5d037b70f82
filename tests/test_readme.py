"""The README's commands exist with the options it shows (their full runs are covered elsewhere)."""
import re
import shlex

import click

from conftest import docs_text
from lowformer.cli import main


def _readme_commands():
    text = docs_text()
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S) + re.findall(r"`(lowformer [^`]+)`", text)
    for block in blocks:
        for line in block.splitlines():
            line = line.split("#")[0].strip().lstrip("$ ").strip()
            if line.startswith("lowformer "):
                yield line


def _resolve(words):
    cmd, ctx = main, click.Context(main)
    rest = list(words)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(ctx, rest[0])
        assert sub is not None, f"README names an unknown command: {' '.join(words)}"
        cmd, rest = sub, rest[1:]
    return cmd, rest


def test_every_readme_command_and_option_exists():
    lines = list(_readme_commands())
    assert len(lines) >= 15
    for line in lines:
        words = [w for w in shlex.split(line.replace("\\|", "|"))[1:] if "|" not in w]
        cmd, rest = _resolve(words)
        known = {opt for p in cmd.params for opt in p.opts + p.secondary_opts}
        for w in rest:
            if w.startswith("--"):
                assert w.split("=")[0] in known, f"{w} is not an option of: {line}"
