"""Loads libflexflow_spec with cffi (ABI mode). The declarations are read from the one
real C header, between its cffi markers, so the binding cannot drift from the library."""
from __future__ import annotations

import os
import re
from pathlib import Path

import cffi

from .errors import STATUS_ERRORS, InternalError

_PKG = Path(__file__).resolve().parent


def _find(candidates: list[Path], what: str) -> Path:
    for c in candidates:
        if c.exists():
            return c
    raise ImportError(f"flexflow_spec: cannot find {what}; looked in " + ", ".join(map(str, candidates)) +
                      ". Install the package with pip (see README.md) or set FFS_LIBRARY.")


def _header_path() -> Path:
    return _find([_PKG / "include" / "flexflow_spec.h",
                  _PKG.parents[1] / "include" / "flexflow_spec" / "c" / "flexflow_spec.h"],
                 "the C header flexflow_spec.h")


def _library_path() -> Path:
    env = os.environ.get("FFS_LIBRARY")
    if env:
        return _find([Path(env)], f"FFS_LIBRARY={env}")
    return _find([_PKG / "lib" / "libflexflow_spec.so"], "libflexflow_spec.so")


def _cdef_text(header: str) -> str:
    m = re.search(r"/\* cffi-begin \*/(.*?)/\* cffi-end \*/", header, re.S)
    if not m:
        raise ImportError("flexflow_spec.h has no cffi markers")
    text = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    return text


# OpenMP threads that spin after a parallel region take the cores OpenBLAS's threads need
# next (measured: 157 vs 30 ms per SmolLM2 step with -ll:cpu 1 on 2 cores). Must be set
# before libgomp starts; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ffi = cffi.FFI()
ffi.cdef(_cdef_text(_header_path().read_text()))
lib = ffi.dlopen(str(_library_path()))


def check(status: int) -> None:
    """Raise the typed exception for a failed C call, with the core's message."""
    if status == 0:
        return
    msg = ffi.string(lib.ffs_last_error()).decode("utf-8", "replace")
    cls = STATUS_ERRORS[status] if 0 < status < len(STATUS_ERRORS) else InternalError
    raise cls(msg or f"flexflow_spec call failed with status {status}")
