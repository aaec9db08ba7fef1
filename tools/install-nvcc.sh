#!/usr/bin/env bash
# Installs a pinned CUDA compiler from PyPI into a virtual environment, so that
# build.rs can compile kernels/*.cu on machines without a CUDA toolkit (CI, dev boxes),
# and NVRTC beside it, so that the tests also compile the embedded sources the way the
# run-time fallback does (set CUDA_HOME to the nvcc's parent's parent to find it).
# The versions match the GPU machines' CUDA 13.0 driver: a newer nvcc emits PTX
# that a 13.0 driver refuses, and an unpinned nvidia-nvvm pulls a cicc whose PTX
# ptxas rejects ("Unsupported .version").
#
# Usage: tools/install-nvcc.sh [VENV_DIR]   (default: .venv-cuda in the repo root)
# Prints the nvcc path last. build.rs finds it there without any environment variable.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.venv-cuda}"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
    nvidia-cuda-nvcc==13.0.88 \
    nvidia-nvvm==13.0.88 \
    nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-cccl==13.0.85 \
    nvidia-cuda-nvrtc==13.0.88

nvcc="$(ls "$venv"/lib/python3*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n1)"
if [ -z "$nvcc" ] || [ ! -x "$nvcc" ]; then
    echo "install-nvcc: nvcc not found under $venv after install" >&2
    exit 1
fi
"$nvcc" --version | tail -n 2 >&2
echo "$nvcc"
