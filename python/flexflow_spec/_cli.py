"""Console entry points: `spec_infer` and `incr_decoding` run the C++ programs installed in
the package (flexflow_spec/bin), with the same flags as build/inference/*/."""
from __future__ import annotations

import os
import sys
from pathlib import Path

_BIN = Path(__file__).resolve().parent / "bin"


def _exec(name: str) -> None:
    exe = _BIN / name
    if not exe.exists():
        sys.exit(f"{name}: error: {exe} is missing; reinstall flexflow_spec (pip install .)")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.execv(str(exe), [name, *sys.argv[1:]])


def spec_infer() -> None:
    _exec("spec_infer")


def incr_decoding() -> None:
    _exec("incr_decoding")
