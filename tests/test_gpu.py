"""Runs the GPU test programs when they are built, and skips with the reason when they are
not (built without CUDA, or without cuBLAS headers) or when the program finds no GPU:
- tests/cpp/test_gpu_kernels.cu: every CUDA kernel against the CPU kernels, fresh random
  inputs each run;
- tests/cpp/test_gpu_forward.cu: GpuLlama against llama_forward_cpu on tiny random models
  (prefill, decode, tree verification, KV commits), fp32/fp16/bf16."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# program, the variable naming an out-of-tree build's program, the checks it must pass on a GPU
PROGRAMS = [("test_gpu_kernels", "FFS_GPU_KERNEL_TEST", 90),
            ("test_gpu_forward", "FFS_GPU_FORWARD_TEST", 250)]  # 2 models x 3 dtypes, ~50 checks each


@pytest.mark.parametrize("name,env_var,min_checks", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_gpu_program(name, env_var, min_checks):
    env = os.environ.get(env_var)
    exe = Path(env) if env else next(iter(sorted(ROOT.glob(f"build*/**/tests/cpp/{name}"))), None)
    if exe is None:
        pytest.skip(f"built without CUDA: no {name} under build*/ (configure with nvcc present, FFS_GPU=AUTO)")
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    m = re.search(r"(\d+) passed, (\d+) failed", out.stdout)
    assert m, text
    if "SKIP: no GPU" in out.stdout:
        assert out.returncode == 0, text
        reason = re.search(r"SKIP: no GPU \((.*)\)", out.stdout)
        pytest.skip(f"no GPU on this machine ({reason.group(1) if reason else 'none found'})")
    assert out.returncode == 0 and int(m.group(2)) == 0, text
    assert int(m.group(1)) >= min_checks, text
