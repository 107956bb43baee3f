"""Runs the C++ unit tests of the serving core (built by CMake, no Legion)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_serving_core_units():
    exe = next(iter(sorted(ROOT.glob("build/**/tests/cpp/test_serve"))), None)
    if exe is None:
        pytest.fail("build/.../tests/cpp/test_serve not found: build the project first (pip install .)")
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    m = re.search(r"(\d+) passed, (\d+) failed", out.stdout)
    assert m, out.stdout + out.stderr
    assert out.returncode == 0 and int(m.group(2)) == 0, out.stdout
    assert int(m.group(1)) >= 25
