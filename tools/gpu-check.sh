#!/usr/bin/env bash
# The whole CUDA device check, in two halves.
#
#   tools/gpu-check.sh prepare [DEST]   here (no GPU needed): installs the pinned nvcc
#       (tools/install-nvcc.sh), builds `sae-bench`, the cuda_parity test binary and the
#       C ABI library in release mode with embedded fatbins, and copies them plus this script and
#       benches/torch_baseline.py into DEST (default .gpu/ in the repository root, which
#       must be git-ignored, e.g. `echo /.gpu/ >> .git/info/exclude`).
#
#   .gpu/gpu-check.sh device [DIR]      on the GPU machine: runs, writing JSON and logs
#       under $OUT (or ./gpu-out):
#         1. sae-bench info               device, how kernels loaded (fatbin or NVRTC)
#         2. sae-bench run                per-kernel timings + dump streaming
#         3. torch_baseline.py            PyTorch on the same shapes, same run
#         4. sae-bench verify             GPU against the CPU reference (non-zero on mismatch)
#         5. cuda_parity test binary      the same cases through the test harness
#         6. info / verify --quick with --force-nvrtc: the NVRTC fallback
#         7. ffi/tests/gpu_device_ptr.sh  C ABI device pointers with torch CUDA tensors
#       DIR is where the carried files are (default: this script's directory).
#
# With the device tool, from the repository root of the session's checkout:
#   run(command="bash .gpu/gpu-check.sh device", carry=[".gpu"], timeout_s=420, kind="nvidia-h200")
# The machine has driver 580 / CUDA 13.0, cuBLAS 13, torch; no cargo.
set -uo pipefail

mode="${1:-}"
case "$mode" in
prepare)
    set -e
    root="$(cd "$(dirname "$0")/.." && pwd)"
    dest="${2:-$root/.gpu}"
    cd "$root"
    nvcc="$(bash tools/install-nvcc.sh | tail -n 1)"
    export NVCC="$nvcc" SAE_REQUIRE_NVCC=1
    cargo build --release --bin sae-bench
    cargo build --release -p sae-engine-ffi
    test_bin="$(cargo test --release --test cuda_parity --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda_parity":
        print(m["executable"])' | tail -n 1)"
    target="${CARGO_TARGET_DIR:-$root/target}"
    mkdir -p "$dest"
    # Debug info stripped: the carried tree is limited to 64 MiB.
    objcopy --strip-debug "$target/release/sae-bench" "$dest/sae-bench"
    objcopy --strip-debug "$test_bin" "$dest/cuda_parity"
    objcopy --strip-debug "$target/release/libsae_engine_ffi.so" "$dest/libsae_engine_ffi.so"
    cp tools/gpu-check.sh benches/torch_baseline.py "$dest/"
    git rev-parse HEAD > "$dest/COMMIT" 2>/dev/null || true
    ls -la "$dest"
    ;;
device)
    here="${2:-$(cd "$(dirname "$0")" && pwd)}"
    out="${OUT:-$PWD/gpu-out}"
    mkdir -p "$out"
    export PYTHONUNBUFFERED=1
    log="$out/log.txt"
    status=0
    step() { # name, time limit (s), command...  A hung step cannot eat the whole lease.
        local name="$1" limit="$2"; shift 2
        echo "=== $name: $*" | tee -a "$log"
        local t0=$SECONDS
        timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$log"
        local rc=${PIPESTATUS[0]}
        echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
        [ "$rc" -eq 0 ] || status=1
    }
    { date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null; cat "$here/COMMIT" 2>/dev/null; } | tee -a "$log"
    step info 30 "$here/sae-bench" info --json "$out/info.json"
    # The measurements first, so a slow verify cannot cost them the lease.
    step bench 180 "$here/sae-bench" run --reps "${REPS:-5}" --scratch "${TMPDIR:-/tmp}" --json "$out/bench.json"
    step torch 150 python3 "$here/torch_baseline.py" --reps "${REPS:-5}" --json "$out/torch.json"
    step verify 240 "$here/sae-bench" verify --json "$out/verify.json"
    step parity 90 "$here/cuda_parity" --test-threads=1 --nocapture
    # The run-time fallback of a build without nvcc: the same binary with its fatbins ignored,
    # every module compiled by NVRTC (torch's nvidia wheels provide libnvrtc), quick verify.
    cache="${TMPDIR:-/tmp}/sae-nvrtc-cache"
    step nvrtc_info 60 env SAE_CACHE_DIR="$cache" "$here/sae-bench" --force-nvrtc info --json "$out/info-nvrtc.json"
    step nvrtc_verify 180 env SAE_CACHE_DIR="$cache" "$here/sae-bench" --force-nvrtc verify --quick --json "$out/verify-nvrtc.json"
    # The C ABI's device-pointer path through the Python binding and torch CUDA tensors
    # (ffi/ comes with the working tree; the library was built by `prepare`).
    step ffi_device_ptr 90 bash "$here/../ffi/tests/gpu_device_ptr.sh" "$here/libsae_engine_ffi.so"
    exit $status
    ;;
*)
    sed -n '2,30p' "$0"
    exit 2
    ;;
esac
