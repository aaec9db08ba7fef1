#!/usr/bin/env bash
# Device-pointer check of the C ABI through the Python binding and torch CUDA tensors.
# Runs on the GPU machine (python3 + torch + numpy, no cargo); build the library here first:
#     cargo build --release -p sae-engine-ffi        # with the CUDA backend compiled in
# then, from the repository root on the GPU machine (tools/gpu-check.sh can call this):
#     bash ffi/tests/gpu_device_ptr.sh [path/to/libsae_engine_ffi.so]
# Writes $OUT/gpu_device_ptr.jsonl when $OUT is set. Exit status non-zero on any failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
lib=${1:-${SAE_ENGINE_LIB:-$root/target/release/libsae_engine_ffi.so}}
[ -f "$lib" ] || { echo "gpu_device_ptr: $lib not found (build it with cargo build --release -p sae-engine-ffi)" >&2; exit 2; }
export SAE_ENGINE_LIB=$lib
export PYTHONPATH="$root/ffi/python:$root/ffi/python/tests${PYTHONPATH:+:$PYTHONPATH}"
log=${OUT:+$OUT/gpu_device_ptr.jsonl}
if [ -n "$log" ]; then
  python3 "$root/ffi/python/tests/gpu_device_ptr_check.py" | tee "$log"
else
  python3 "$root/ffi/python/tests/gpu_device_ptr_check.py"
fi
