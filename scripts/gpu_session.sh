#!/usr/bin/env bash
# The issue-5 checks on a lent GPU machine (no network; see docs/gpu_kernels.md), in as few
# device calls as possible. Prepare here, on the dev machine:
#
#   bash scripts/gpu_session.sh prepare     # fills .gpu_carry/ (17 MiB) and the SmolLM2 GGUF
#                                           # in two halves, .gpu_fixture_a/ and .gpu_fixture_b/
#
# then on the device (each stage writes its log under $OUT):
#
#   carry .gpu_carry .gpu_fixture_a:  bash scripts/gpu_session.sh build
#       cmake + ninja into build-gpu/ (~2 min on 16 cores)
#   carry .gpu_fixture_b:             bash scripts/gpu_session.sh fixture test
#       SmolLM2 put back together; kernel + forward programs, Legion GPU smoke, suites on the GPU
#   (no carry):                       bash scripts/gpu_session.sh bench
#       bench_gpu_forward, benchmarks/bench_gpu.py --models 1b, bench_speculative.py on the GPU
#   (no carry):                       bash scripts/gpu_session.sh bench7b
#       benchmarks/bench_gpu.py --models 7b
#   if a test program failed:         bash scripts/gpu_session.sh sanitize
#       compute-sanitizer memcheck + racecheck on test_gpu_forward
#
# build-gpu/ stays on the machine between calls while it is warm (it goes back after 30 s
# idle), so run the stages back to back, or `all` in one call when the time limit allows.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CARRY=$ROOT/.gpu_carry
OUT=${OUT:-$ROOT/.gpu_out}
mkdir -p "$OUT"

prepare() {
  set -e
  local exclude
  exclude="$(git rev-parse --git-dir)/info/exclude"
  mkdir -p "$(dirname "$exclude")"
  for p in /.gpu_carry/ /.gpu_fixture_a/ /.gpu_fixture_b/ /build-gpu/ /.gpu_out/; do
    grep -qx "$p" "$exclude" 2>/dev/null || echo "$p" >> "$exclude"
  done
  rm -rf "$CARRY" && mkdir -p "$CARRY/wheels"
  # The CUDA Legion install this checkout's patches give (built here once, reused).
  local prefix
  prefix=$(python3 cmake/legion_cache.py --cuda | tail -1)
  tar -C "$prefix" -cJf "$CARRY/legion.tar.xz" .
  # cuBLAS headers (and nvml.h) as CMake found them here: the device cannot fetch them.
  local extras
  extras=$(dirname "$(dirname "$prefix")")/flexflow_spec/cuda-13.0-extras
  [ -d "$extras/include" ] || extras=$HOME/.cache/flexflow_spec/cuda-13.0-extras
  tar -C "$extras" -cJf "$CARRY/cuda-extras.tar.xz" include
  # What the device's Python (3.12, torch, scikit-build-core, no network) lacks: cffi, and
  # OpenBLAS (scipy-openblas32 ships the library, headers and CMake files).
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$CARRY/wheels" cffi pycparser "scipy-openblas32==0.3.34.*" gguf
  du -sh "$CARRY"/* | sed 's/^/[gpu-session] /'
  echo "[gpu-session] carry .gpu_carry (total $(du -sm "$CARRY" | cut -f1) MiB)"
  # SmolLM2 (94 MB) in two calls' worth, plus the cached transformers references.
  local gguf
  gguf=$(python3 -c "from flexflow_spec.fixtures import smollm2_gguf; print(smollm2_gguf())")
  rm -rf .gpu_fixture_a .gpu_fixture_b && mkdir -p .gpu_fixture_a .gpu_fixture_b
  # 44 MiB with .gpu_carry's 17 in the first call, the rest (~50 MiB) in the second.
  head -c $((44 << 20)) "$gguf" > .gpu_fixture_a/part.00
  tail -c +$(((44 << 20) + 1)) "$gguf" > .gpu_fixture_b/part.01
  cp -r "$(dirname "$gguf")/hf_reference" .gpu_fixture_a/
  echo "[gpu-session] .gpu_fixture_a $(du -sm .gpu_fixture_a | cut -f1) MiB, .gpu_fixture_b $(du -sm .gpu_fixture_b | cut -f1) MiB"
}

fixture() {
  local dest
  dest=$(python3 -c "import os; print(os.path.expanduser('~/.cache/flexflow_spec/fixtures'))")
  mkdir -p "$dest"
  if [ -f .gpu_fixture_a/part.00 ] && [ -f .gpu_fixture_b/part.01 ]; then
    cat .gpu_fixture_a/part.00 .gpu_fixture_b/part.01 > "$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
    cp -r .gpu_fixture_a/hf_reference "$dest/"
    echo "[gpu-session] SmolLM2 GGUF: $(sha256sum "$dest/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -c1-16)"
  else
    echo "[gpu-session] SmolLM2 halves missing: the suites that need it will skip"
  fi
}

env_setup() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$CARRY"/wheels/*.whl >/dev/null 2>&1 || true
  export PYTHONPATH=/tmp/site:$ROOT/python${PYTHONPATH:+:$PYTHONPATH}
  export FFS_LIBRARY=$ROOT/build-gpu/src/libflexflow_spec.so
  # cuBLAS from the venv's nvidia-cublas wheel (nvidia/cu13/lib in CUDA 13 wheels).
  local d
  d=$(ls -d /opt/torch/.venv/lib/python3*/site-packages/nvidia/{cu13,cublas}/lib 2>/dev/null | head -1)
  [ -n "$d" ] && export FFS_CUBLAS_LIBRARY=$d
  export LD_LIBRARY_PATH=$(python3 -c "import scipy_openblas32 as s; print(s.get_lib_dir())" 2>/dev/null):${LD_LIBRARY_PATH:-}
  export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 FFS_TEST_SKIP_MISSING_FIXTURES=1
}

build() {
  env_setup
  mkdir -p /tmp/legion && tar -C /tmp/legion -xJf "$CARRY/legion.tar.xz"
  local cv
  cv=$("$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
  mkdir -p "$HOME/.cache/flexflow_spec/cuda-$cv-extras" &&
    tar -C "$HOME/.cache/flexflow_spec/cuda-$cv-extras" -xJf "$CARRY/cuda-extras.tar.xz"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DLegion_ROOT=/tmp/legion -DFFS_BLAS=SCIPY \
    -DFFS_BUILD_TESTS=ON -DFFS_GPU_EMU=OFF -DFFS_HIP_CHECK=OFF -DPython3_EXECUTABLE="$(command -v python3)" 2>&1 | tee "$OUT/configure.log" | grep -E "GPU|Legion|BLAS|Error"
  ninja -C build-gpu 2>&1 | tee "$OUT/build.log" | tail -3
}

run_tests() {
  env_setup
  local rc=0
  for t in test_gpu_kernels test_gpu_forward; do
    echo "== $t" | tee -a "$OUT/tests.log"
    ./build-gpu/tests/cpp/$t 2>&1 | tee "$OUT/$t.log" | tail -5 | tee -a "$OUT/tests.log" || rc=1
  done
  echo "== Legion GPU smoke: a tiny random LLaMA on the GPU, greedy tokens == transformers" | tee -a "$OUT/tests.log"
  if ! smoke; then
    rc=1
    echo "== the same without CUDA graphs and with Realm's GPU logging (diagnosis)" | tee -a "$OUT/tests.log"
    FFS_CUDA_GRAPHS=0 FFS_SMOKE_LEGION_ARGS="-level gpu=1" smoke || true
  fi
  echo "== Python suites on the GPU (FFS_TEST_NUM_GPUS=1)" | tee -a "$OUT/tests.log"
  FFS_GPU_KERNEL_TEST=$ROOT/build-gpu/tests/cpp/test_gpu_kernels FFS_GPU_FORWARD_TEST=$ROOT/build-gpu/tests/cpp/test_gpu_forward \
    timeout 480 python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -15 || rc=1
  return $rc
}

# A tiny random LLaMA through ff.init(num_gpus=1): Legion GPU tasks, greedy tokens == transformers.
smoke() {
  python3 - <<'EOF' 2>&1 | tee -a "$OUT/tests.log"
import tempfile, sys
sys.path.insert(0, "tests")
import torch, flexflow_spec as ff
from conftest import make_tiny_llama
from transformers import AutoModelForCausalLM
d = make_tiny_llama(__import__("pathlib").Path(tempfile.mkdtemp()) / "tiny", seed=3)
import os
extra = os.environ.get("FFS_SMOKE_LEGION_ARGS", "").split()
print("settings", ff.init(num_gpus=1, num_cpus=2, legion_args=extra))
llm = ff.LLM(str(d), data_type=ff.DataType.DT_FLOAT)
llm.compile(ff.GenerationConfig(), max_requests_per_batch=2, max_seq_length=64)
prompt = [1, 5, 9, 33, 7]
ours = llm.generate(prompt, max_new_tokens=24, ignore_eos=True).output_tokens
hf = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
ref = hf.generate(torch.tensor([prompt]), max_new_tokens=24, min_new_tokens=24, do_sample=False)[0, len(prompt):].tolist()
print("ours", ours, "\nhf  ", ref, "\nstats", llm.stats())
assert ours == ref, "GPU greedy tokens differ from transformers"
print("LEGION GPU SMOKE OK")
EOF
}

# When a GPU test program fails: compute-sanitizer's memcheck (out-of-bounds, misaligned and
# uninitialised accesses) and racecheck (shared-memory races) on the standalone forward test.
sanitize() {
  env_setup
  local cs
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
  [ -n "$cs" ] || { echo "[gpu-session] no compute-sanitizer on this machine" | tee -a "$OUT/sanitize.log"; return 1; }
  local rc=0
  for tool in memcheck racecheck; do
    echo "== $tool: test_gpu_forward" | tee -a "$OUT/sanitize.log"
    FFS_CUDA_GRAPHS=0 timeout 240 "$cs" --tool "$tool" --error-exitcode 9 ./build-gpu/tests/cpp/test_gpu_forward 2>&1 |
      tail -20 | tee -a "$OUT/sanitize.log" || rc=1
  done
  return $rc
}

# The kernel-level benchmark, the 1B model against transformers, speculative vs incremental and
# the two drivers on SmolLM2 (these need the fixture stage's GGUF). The 7B model is a call of its own (bench7b): its
# checkpoint (13 GB), torch.compile and our load do not fit one call with the rest.
bench() {
  env_setup
  timeout 120 ./build-gpu/benchmarks/gpu/bench_gpu_forward --json "$OUT/bench_gpu_forward.json" 2>&1 |
    tee "$OUT/bench_gpu_forward.log"
  timeout 240 python3 benchmarks/bench_gpu.py --models 1b --json "$OUT/bench_gpu_1b.json" --workdir /tmp 2>&1 |
    tee "$OUT/bench_gpu_1b.log" | tail -6
  timeout 140 python3 benchmarks/bench_speculative.py --num-gpus 1 --prompts 3 --new-tokens 48 2>&1 |
    tee "$OUT/bench_speculative_gpu.log" | tail -22
  timeout 60 python3 benchmarks/bench_step_overhead.py --num-gpus 1 --runs 1 --batch 1 2>&1 |
    tee "$OUT/bench_step_overhead_gpu.log" | tail -8
}

bench7b() {
  env_setup
  timeout 560 python3 benchmarks/bench_gpu.py --models 7b --json "$OUT/bench_gpu_7b.json" --workdir /tmp 2>&1 |
    tee "$OUT/bench_gpu_7b.log" | tail -6
}

rc=0
for stage in "${@:-all}"; do
  case "$stage" in
    prepare) prepare || rc=1 ;;
    build) build || rc=1 ;;
    fixture) fixture || rc=1 ;;
    test) run_tests || rc=1 ;;
    bench) bench || rc=1 ;;
    bench7b) bench7b || rc=1 ;;
    sanitize) sanitize || rc=1 ;;
    all) { build && fixture && run_tests; bench; } || rc=1 ;;
    *) echo "usage: $0 prepare|build|fixture|test|bench|bench7b|sanitize|all ..." >&2; exit 2 ;;
  esac
done
exit $rc
