"""Runs the C++ unit tests: the serving core (scheduling, token trees, speculation
bookkeeping; no Legion) and tree attention against a naive reference."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name,min_checks", [("test_serve", 60), ("test_tree_attention", 20)])
def test_cpp_suite(name, min_checks):
    exe = next(iter(sorted(ROOT.glob(f"build/**/tests/cpp/{name}"))), None)
    if exe is None:
        pytest.fail(f"build/.../tests/cpp/{name} not found: build the project first (scripts/install.sh)")
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    m = re.search(r"(\d+) passed, (\d+) failed", out.stdout)
    assert m, out.stdout + out.stderr
    assert out.returncode == 0 and int(m.group(2)) == 0, out.stdout
    assert int(m.group(1)) >= min_checks
