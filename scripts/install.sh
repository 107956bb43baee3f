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

echo "[install] Legion (cached; the first build takes 11-18 minutes on 2 cores)"
$PY cmake/legion_cache.py

echo "[install] flexflow_spec"
$PY -m pip install -q --no-build-isolation .
echo "[install] done"
