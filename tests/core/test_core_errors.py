"""lowformer.core: the one error-first-line helper and the one /proc/cpuinfo reader."""
from __future__ import annotations

import pytest

from lowformer.core import machine
from lowformer.core.errors import first_line

OPENVINO_TEXT = """Exception from src/inference/src/cpp/core.cpp:99:
Check 'false' failed at src/frontends/onnx/frontend/src/frontend.cpp:124:

  Model input 'input' has an unsupported element type: f64
more detail"""


@pytest.mark.parametrize("error, kwargs, expected", [
    (RuntimeError("\n  first line  \nsecond"), {}, "first line"),  # the CLI's, pt2's use
    (ValueError(""), {}, "ValueError"),  # an empty message: the type's name
    (KeyError(), {"typed": True}, "KeyError"),  # ... not "KeyError: KeyError"
    (AttributeError("module has no attribute x\ntrace"), {"typed": True}, "AttributeError: module has no attribute x"),
    (RuntimeError("x" * 500), {"limit": 200}, "x" * 200),  # pt2's and the harness's bound
    (RuntimeError("x" * 500), {"limit": 200, "typed": True}, "RuntimeError: " + "x" * 200),
    (OPENVINO_TEXT, {"limit": 300, "skip": ("Exception from", "Check '")},  # OpenVINO's frames passed over
     "Model input 'input' has an unsupported element type: f64"),
    ("Exception from a\nCheck 'b' failed", {"skip": ("Exception from", "Check '")}, "Exception from a"),  # all framed
    ("  \n ", {}, "unknown error"),  # an empty text
])
def test_first_line_serves_every_one_line_error(error, kwargs, expected):
    line = first_line(error, **kwargs)
    assert line == expected and "\n" not in line


def test_all_cpu_flags_are_read_once_and_the_isa_flags_come_from_them(monkeypatch, tmp_path):
    machine.all_cpu_flags.cache_clear()
    try:
        flags = machine.all_cpu_flags()
        assert isinstance(flags, frozenset) and machine.all_cpu_flags() is flags  # cached
        assert set(machine.cpu_flags()) == {f for f in machine.ISA_FLAGS if f in flags}
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n"
                           "processor\t: 1\nflags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n")
        real = machine.Path
        monkeypatch.setattr(machine, "Path", lambda p: real(cpuinfo) if p == "/proc/cpuinfo" else real(p))
        machine.all_cpu_flags.cache_clear()
        assert machine.all_cpu_flags() == {"fpu", "sse2", "avx2", "fma", "avx512f", "avx512_vnni"}
        assert machine.cpu_flags() == ["avx2", "avx512_vnni", "avx512f", "fma"]
        assert machine.cpu_isa() == "AVX-512 VNNI" and machine.has_int8_dot_product()
        monkeypatch.setattr(machine, "Path", lambda p: real(tmp_path / "absent"))
        machine.all_cpu_flags.cache_clear()
        assert machine.all_cpu_flags() == frozenset() and machine.cpu_flags() == []  # unreadable: nothing known
    finally:
        monkeypatch.undo()
        machine.all_cpu_flags.cache_clear()
