#!/usr/bin/env bash
# Installs flexflow_spec on a fresh Debian/Ubuntu machine: OpenBLAS, the Python
# dependencies (CPU torch for the reference checks), Legion (built once into
# ~/.cache/flexflow_spec, reused afterwards) and the package itself.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! { [ -f /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] || [ -f /usr/include/cblas.h ] ||
       [ -f /usr/include/openblas/cblas.h ]; }; then
  echo "[install] installing OpenBLAS (libopenblas-dev)"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq libopenblas-dev >/dev/null
fi

PY=${PYTHON:-python3}
echo "[install] Python dependencies"
# torch first, pinned, so nothing below pulls a CUDA build.
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q "scikit-build-core>=0.10" "cffi>=1.16" cmake ninja numpy "transformers>=4.45" "gguf>=0.10" \
  accelerate safetensors scipy pytest sentencepiece protobuf

# With nvcc present the build compiles the CUDA kernels and needs Legion with CUDA (one
# Legion for GPU and GPU-less machines alike); FFS_GPU=OFF builds the CPU backend only.
# The same nvcc lookup as CMakeLists.txt.
LEGION_ARGS=()
PIP_ARGS=()
# FFS_HIP_CHECK=ON/AUTO: also compile the GPU kernels for AMD GPUs with hipcc (CI does).
[ -n "${FFS_HIP_CHECK:-}" ] && PIP_ARGS+=(-C "cmake.define.FFS_HIP_CHECK=$FFS_HIP_CHECK")
if [ "${FFS_GPU:-AUTO}" = "OFF" ]; then
  PIP_ARGS+=(-C cmake.define.FFS_GPU=OFF)
elif command -v nvcc >/dev/null || [ -x "${CUDA_HOME:-/nonexistent}/bin/nvcc" ] ||
     [ -x /usr/local/cuda/bin/nvcc ] || [ -x /opt/cuda/bin/nvcc ]; then
  LEGION_ARGS+=(--cuda)
fi
echo "[install] Legion ${LEGION_ARGS[*]:-(CPU)} (cached; the first build takes 11-19 minutes on 2 cores)"
$PY cmake/legion_cache.py "${LEGION_ARGS[@]}"

echo "[install] flexflow_spec"
$PY -m pip install -q --no-build-isolation "${PIP_ARGS[@]}" .
echo "[install] done"
