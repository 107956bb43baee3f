"""Runs the GPU test programs when they are built, and skips with the reason when they are
not (built without CUDA, or without cuBLAS headers) or when the program finds no GPU:
- tests/cpp/test_gpu_kernels.cu: every CUDA kernel against the CPU kernels, fresh random
  inputs each run;
- tests/cpp/test_gpu_forward.cu: GpuLlama against llama_forward_cpu on tiny random models
  (prefill, decode, tree verification, KV commits), fp32/fp16/bf16;
the same two programs built over the CPU emulation of CUDA (src/kernels/gpu/emu:
test_gpu_kernels_emu, test_gpu_forward_emu), which run on every machine, CI included, with
the cases scaled down, once as an H100 (32-lane warps) and once as the AMD GPU a HIP build
targets (_wave64: 64-lane wavefronts, 64 KiB of LDS per block); the HIP compile check's
objects, where hipcc was installed; the Python suites of tiny models through the GPU
engine over the emulator (libflexflow_spec_gpuemu), on every machine; and, where
ff.gpu_info() sees a GPU, all the Python suites again with the models on the GPU
(FFS_TEST_NUM_GPUS=1): greedy token equality with transformers and with the CPU references,
speculative == incremental, the sampling and MSS distribution tests, the error paths."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import flexflow_spec as ff

ROOT = Path(__file__).resolve().parents[1]

# program, the variable naming an out-of-tree build's program, the checks it must pass on a GPU
PROGRAMS = [("test_gpu_kernels", "FFS_GPU_KERNEL_TEST", 380),
            ("test_gpu_forward", "FFS_GPU_FORWARD_TEST", 730)]  # 2 models x 3 dtypes x graphs on/off + 2 cuBLAS-only


def missing_build(why: str):
    """Skips: this build lacks what the test runs. CI builds all of it and sets
    FFS_TEST_REQUIRE_BUILT=1 (.ci/run), so there a missing piece fails instead of skipping."""
    if os.environ.get("FFS_TEST_REQUIRE_BUILT") == "1":
        pytest.fail(f"{why} (FFS_TEST_REQUIRE_BUILT=1: this build must have it)")
    pytest.skip(why)


def run_program(name: str, env_var: str, missing: str, timeout: int, args: tuple = (), env: dict | None = None):
    """Runs tests/cpp program `name` ($env_var, else the first build*/ that has it; skips with
    `missing` when none does), with `env` added to the environment. Returns the run, its
    output's tail and its (passed, failed) counts."""
    path = os.environ.get(env_var)
    exe = Path(path) if path else next(iter(sorted(ROOT.glob(f"build*/**/tests/cpp/{name}"))), None)
    if exe is None:
        missing_build(f"no {name} under build*/: {missing}")
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    text = out.stdout[-6000:] + out.stderr[-3000:]
    m = re.search(r"(\d+) passed, (\d+) failed", out.stdout)
    assert m, text
    return out, text, int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("name,env_var,min_checks", PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_gpu_program(name, env_var, min_checks):
    out, text, passed, failed = run_program(name, env_var, "built without CUDA (configure with nvcc present, "
                                            "FFS_GPU=AUTO)", 600)
    if "SKIP: no GPU" in out.stdout:
        assert out.returncode == 0, text
        reason = re.search(r"SKIP: no GPU \((.*)\)", out.stdout)
        pytest.skip(f"no GPU on this machine ({reason.group(1) if reason else 'none found'})")
    assert out.returncode == 0 and failed == 0, text
    assert passed >= min_checks, text


# The emulated builds of the same programs: the kernels' logic on the CPU, on every machine
# (the minimum counts are lower: test_gpu_kernels skips its M = 128 GEMMs there). They run
# with a fixed seed (FFS_GPU_EMU_SEED, default 1), so CI is repeatable; run the programs
# without an argument for fresh inputs (docs/gpu_kernels.md: the seeds checked).
# The _wave64 builds run the HIP code paths (FFS_WARP_SIZE 64, attention tiles sized for 64 KiB).
# "shuffled" runs warps and lanes in a fresh random order at every barrier phase
# (FFS_GPU_EMU_SCHEDULE), which exposes shared-memory races that thread order hides; the
# kernel programs (minutes each) take one schedule each, the forward ones (seconds) both.
MISSING_EMU = "the emulator is built with the GPU kernels and cuBLAS's headers (nvcc present, FFS_GPU_EMU=ON)"
EMULATED = [("test_gpu_kernels_emu", "FFS_GPU_KERNEL_EMU_TEST", 380, 32, "in-order"),
            ("test_gpu_forward_emu", "FFS_GPU_FORWARD_EMU_TEST", 800, 32, "in-order"),
            ("test_gpu_forward_emu", "FFS_GPU_FORWARD_EMU_TEST", 800, 32, "shuffled"),
            ("test_gpu_kernels_emu_wave64", "FFS_GPU_KERNEL_EMU64_TEST", 380, 64, "shuffled"),
            ("test_gpu_forward_emu_wave64", "FFS_GPU_FORWARD_EMU64_TEST", 800, 64, "in-order"),
            ("test_gpu_forward_emu_wave64", "FFS_GPU_FORWARD_EMU64_TEST", 800, 64, "shuffled")]


@pytest.mark.parametrize("name,env_var,min_checks,warp,schedule", EMULATED,
                         ids=[f"{p[0]}-{p[4]}" for p in EMULATED])
def test_gpu_program_on_the_emulator(name, env_var, min_checks, warp, schedule):
    seed = os.environ.get("FFS_GPU_EMU_SEED", "1")
    out, text, passed, failed = run_program(name, env_var, MISSING_EMU, 900, (seed,),
                                            {"FFS_GPU_EMU_SCHEDULE": f"{schedule}:{seed}" if schedule == "shuffled"
                                             else schedule})
    assert "SKIP" not in out.stdout, text
    assert f"warp size {warp}," in out.stdout, text  # the device profile the program was built for
    assert out.returncode == 0 and failed == 0, text
    assert passed >= min_checks, text


# The emulator's own checks (tests/cpp/test_gpu_emu.cc): a racy kernel gives the thread-order
# result in order and a different one shuffled; shuffles and launch limits per profile.
@pytest.mark.parametrize("name", ["test_gpu_emu", "test_gpu_emu_wave64"])
@pytest.mark.parametrize("schedule", ["in-order", "shuffled"])
def test_the_emulator_finds_what_it_claims(name, schedule):
    out, text, passed, failed = run_program(name, "FFS_NO_SUCH_VARIABLE", MISSING_EMU, 60, (),
                                            {"FFS_GPU_EMU_SCHEDULE": schedule})
    assert out.returncode == 0 and failed == 0 and passed >= 7, text
    assert re.search(r"race kernel: \d+ of 256", out.stdout), text


# The HIP compile check (src/CMakeLists.txt, FFS_HIP_CHECK): where hipcc was installed at build
# time, every kernel source and the forward pass were compiled for AMD GPUs with -Wall -Wextra
# -Werror; each kernel object must carry a code object for every target of FFS_HIP_ARCHS (the
# forward pass is host code over the kernels: its object has none).
HIP_KERNELS = ["attention", "draft_probs", "embedding", "kv_commit", "linear_small", "rms_norm", "rope",
               "sampling", "swiglu"]


def test_kernels_compile_for_amd_gpus():
    hip_dirs = sorted(p for p in ROOT.glob("build*/src/hip") if p.is_dir())
    if not hip_dirs:
        why = ("no HIP compile check in the build: it is off by default (FFS_HIP_CHECK=OFF) or hipcc was "
               "missing; CI runs it (apt-get install hipcc; FFS_HIP_CHECK=ON bash scripts/install.sh)")
        # CI turns the check on where it could install hipcc (.ci/run exports FFS_HIP_CHECK=ON).
        missing_build(why) if os.environ.get("FFS_HIP_CHECK") == "ON" else pytest.skip(why)
    build = hip_dirs[0].parents[1]
    cache = (build / "CMakeCache.txt").read_text()
    archs = re.search(r"^FFS_HIP_ARCHS:STRING=(.*)$", cache, re.M).group(1).split(";")
    forward = hip_dirs[0] / "llama_forward_gpu.o"
    assert forward.is_file(), f"{forward} missing: the HIP compile check did not build the forward pass"
    for name in HIP_KERNELS:
        obj = hip_dirs[0] / f"{name}.o"
        assert obj.is_file(), f"{obj} missing: the HIP compile check did not build it"
        data = obj.read_bytes()
        for arch in archs:
            assert f"amdgcn-amd-amdhsa--{arch}".encode() in data, f"{obj} has no code object for {arch}"


# benchmarks/gpu/bench_gpu_forward's harness over the emulator, at a tiny shape: the program a
# lent GPU session runs for its figures must not first fail there. Checks that every table
# comes out complete and that each timing is a positive, finite number; the figures
# themselves mean nothing on the emulator.
def test_gpu_benchmark_harness_on_the_emulator(tmp_path):
    exe = next(iter(sorted(ROOT.glob("build*/**/benchmarks/gpu/bench_gpu_forward_emu"))), None)
    if exe is None:
        missing_build(f"no build*/benchmarks/gpu/bench_gpu_forward_emu: {MISSING_EMU}, with FFS_BUILD_TESTS=ON")
    js = tmp_path / "bench.json"
    out = subprocess.run([str(exe), "--models", "tiny", "--dtype", "f16", "--batches", "1,9", "--trees", "1,4",
                          "--tree-batches", "1,2", "--ctx", "24", "--steps", "4", "--copy-mib", "8",
                          "--json", str(js)], capture_output=True, text=True, timeout=600)
    text = out.stdout[-6000:] + out.stderr[-3000:]
    assert out.returncode == 0, text
    res = json.loads(js.read_text())["results"]
    by_kind: dict[str, list] = {}
    for r in res:
        by_kind.setdefault(r["kind"], []).append(r)
        for k, v in r.items():
            if k.endswith(("_ms", "_s", "us", "fraction")) and not k.startswith("per_"):
                assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (r, text)
    # decode: batch 1 small-M kernels, cuBLAS only and without graphs; batch 9 cuBLAS and without graphs
    assert sorted((r["batch"], r["gemm"]) for r in by_kind["decode"]) == [
        (1, "cublas"), (1, "nograph"), (1, "small"), (9, "cublas"), (9, "nograph")], text
    # every projection at M = 1, 2, 4, 8
    assert len(by_kind["projection"]) == 5 * 4, text
    assert {r["projection"] for r in by_kind["projection"]} == {"qkv", "o", "gate_up+silu", "down", "lm_head"}
    # the per-kernel breakdown at both batches (silu_mul fused into gate_up at batch 1), summed
    # into one line per batch
    assert sorted(r["batch"] for r in by_kind["kernel"]) == [1] * 12 + [9] * 13, text
    assert {r["kernel"] for r in by_kind["kernel"] if r["batch"] == 1} == {
        "add_rms_norm", "qkv", "rope_kv_store", "attention", "o", "gate_up+silu", "down", "final norm",
        "row gather", "lm_head", "argmax"}, text
    assert sorted(r["batch"] for r in by_kind["breakdown"]) == [1, 9], text
    # decode attention on both kernels, with the K/V bytes they read, at both batches
    assert sorted(r["batch"] for r in by_kind["attention"]) == [1, 9], text
    assert all(r["decode_us"] > 0 and r["tiled_us"] > 0 and r["kv_gb"] > 0 for r in by_kind["attention"]), text
    # the verify cost curve: trees 1 and 4 at batches 1 and 2
    assert sorted((r["tree_tokens"], r["batch"]) for r in by_kind["verify"]) == [(1, 1), (1, 2), (4, 1), (4, 2)]
    assert all(r["ms_per_step"] > 0 and r["ms_per_step_tiled_attention"] > 0 for r in by_kind["verify"]), text


# The engine's GPU path on the emulator: libflexflow_spec_gpuemu is the library with its GPU
# task variants over the emulated forward pass, its "GPU" a Legion CPU processor
# (runtime/engine.cc, FFS_GPU_EMU_ENGINE). ff.init(num_gpus=1) there runs what a GPU machine
# runs but the kernels' hardware: weights and KV cache stored in the model's dtype, the GPU
# weight-load and step tasks, CUDA graphs, the GPU sampler, the pipelined driver (the default
# with GPUs). The tiny-model suites, and test_smollm2 (greedy == transformers, GGUF, EOS, fp16
# and bf16 within their bounds of fp32: ~60 s, SmolLM2 being ~0.4 s a token there); not the
# MSS tests (10,000 draws each: 2-5 minutes apiece there; they all passed on it once, see
# docs/gpu_kernels.md) nor the SmolLM2 speculation suites (tens of minutes).
# Steps of <= 8 tokens run the small-M projection kernels (linear_small.cu) in the tiny suites;
# test_smollm2 runs with FFS_GPU_SMALL_GEMM=0 (cuBLAS, emulated natively), because emulating
# SmolLM2's every decode projection lane by lane takes minutes a generation. test_gpu_kernels
# checks the small-M kernels at SmolLM2's projection shapes.
EMU_SUITES = [({}, ["test_tiny_llama.py", "test_architectures.py", "test_errors.py",
                    "test_speculative.py::test_greedy_speculative_equals_incremental_tiny"]),
              ({"FFS_GPU_SMALL_GEMM": "0"}, ["test_smollm2.py"])]


def test_python_suites_on_the_emulated_gpu():
    path = os.environ.get("FFS_GPU_EMU_LIBRARY")
    lib = Path(path) if path else next(iter(sorted(ROOT.glob("build*/src/libflexflow_spec_gpuemu.so"))), None)
    if lib is None:
        missing_build(f"no build*/src/libflexflow_spec_gpuemu.so: {MISSING_EMU}, with FFS_BUILD_TESTS=ON")
    env = {**os.environ, "FFS_LIBRARY": str(lib), "FFS_TEST_NUM_GPUS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import flexflow_spec as ff; print(ff.gpu_info())"],
                           capture_output=True, text=True, timeout=120, env=env)
    assert "CPU emulator" in probe.stdout and "'built': True" in probe.stdout, probe.stdout + probe.stderr
    passed = 0
    for extra_env, suites in EMU_SUITES:
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                              *[str(ROOT / "tests" / f) for f in suites]],
                             capture_output=True, text=True, timeout=900, env={**env, **extra_env}, cwd=ROOT)
        text = f"{extra_env} {suites}:\n" + out.stdout[-8000:] + out.stderr[-4000:]
        assert out.returncode == 0, text
        m = re.search(r"(\d+) passed", out.stdout)
        assert m, text
        passed += int(m.group(1))
        # Nothing skipped but the check for machines without a GPU (the emulator is one).
        skips = re.findall(r"^SKIPPED .*$", out.stdout, re.M)
        assert all("this machine has a GPU" in line for line in skips), text
    assert passed >= 30, f"only {passed} tests passed on the emulated GPU engine"


# The suites whose assertions must hold unchanged on the GPU backend.
GPU_SUITES = ["test_tiny_llama.py", "test_architectures.py", "test_smollm2.py", "test_batching.py",
              "test_sampling.py", "test_speculative.py", "test_speculative_sampling.py", "test_errors.py"]


def test_python_suites_on_the_gpu():
    info = ff.gpu_info()
    if not info["built"]:
        pytest.skip(f"no GPU backend in this build: {info['why']}")
    if info["devices"] == 0:
        pytest.skip(f"no GPU on this machine ({info['why']})")
    env = {**os.environ, "FFS_TEST_NUM_GPUS": "1"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *[str(ROOT / "tests" / f) for f in GPU_SUITES]],
                         capture_output=True, text=True, timeout=3000, env=env, cwd=ROOT)
    text = out.stdout[-8000:] + out.stderr[-4000:]
    assert out.returncode == 0, text
    assert re.search(r"\d+ passed", out.stdout), text
