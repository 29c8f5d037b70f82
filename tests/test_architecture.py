"""The architecture is the map: import-linter contracts hold, benchmarks use the public API, the
README's layout section names every part of the package."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.is_file() and shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    run = subprocess.run([str(exe) if exe.is_file() else "lint-imports", "--no-cache"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def _lowformer_imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lowformer":
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "lowformer":
                    yield node.lineno, a.name, []


@pytest.mark.parametrize("script", sorted((REPO / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmarks_use_the_installed_public_api(script):
    text = script.read_text()
    assert "sys.path" not in text, f"{script.name} edits sys.path: import the installed package instead"
    for line, module, names in _lowformer_imports(script):
        private = [p for p in module.split(".") + names if p.startswith("_")]
        assert not private, f"{script.name}:{line} imports private {private} from {module}"


def test_readme_layout_names_every_part_of_the_package():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Project layout", 1)[1].split("\n## ", 1)[0]
    parts = sorted(p.name if p.is_dir() else p.stem for p in (REPO / "lowformer").iterdir()
                   if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.stem != "__init__"
                                                                          and p.stem != "__main__"))
    missing = [p for p in parts if not re.search(rf"^\s+{re.escape(p)}(/|\.py)\s", section, re.M)]
    assert not missing, f"README 'Project layout' does not mention: {missing}"
