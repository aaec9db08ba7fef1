#!/usr/bin/env bash
# Device-pointer check of the C ABI through the Python binding and torch CUDA tensors.
# Runs on the GPU machine (python3 + torch + numpy, no cargo); build the library here first:
#     cargo build --release -p sae-engine-ffi        # with the CUDA backend compiled in
# then, from the repository root on the GPU machine (tools/gpu-check.sh can call this):
#     bash ffi/tests/gpu_device_ptr.sh [path/to/libsae_engine_ffi.so]
# Writes $OUT/gpu_device_ptr.jsonl when $OUT is set. Exit status non-zero on any failure.
#
# Step 1 (optional, FFI_TEST_BIN=path): the ffi crate's unit-test binary
# (`cargo test -p sae-engine-ffi --lib --no-run`), whose device_pointer_abi_on_gpu test passes
# real device buffers through sae_encode/decode_topk_device via the staged helpers.
# Step 2: the Python binding with torch CUDA tensors against the CUDA engine (needs the CUDA
# engine to implement Engine::device_ptr; until then it reports SAE_STATUS_UNSUPPORTED).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
if [ -n "${FFI_TEST_BIN:-}" ]; then
  "$FFI_TEST_BIN" device_pointer_abi_on_gpu --nocapture 2>&1 | tee ${OUT:+"$OUT/ffi_device_ptr_unit.log"}
  if "$FFI_TEST_BIN" device_pointer_abi_on_gpu --nocapture 2>&1 | grep -q skipped; then
    echo "gpu_device_ptr: no CUDA device visible to the unit test" >&2; exit 1
  fi
fi
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
