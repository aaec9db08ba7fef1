#!/usr/bin/env bash
# The whole CUDA device check, in two halves.
#
#   tools/gpu-check.sh prepare [DEST]   here (no GPU needed): installs the pinned nvcc
#       (tools/install-nvcc.sh), builds `sae-bench`, the integration-test binary (with the GPU
#       tests compiled in: SAE_REQUIRE_GPU=1) and the C ABI library in release mode with
#       embedded fatbins, packs them into DEST/bins.tar.xz, downloads the pinned
#       compute-sanitizer wheel (PyPI nvidia-cuda-sanitizer-api, the CUDA 13.0 line) and copies
#       this script, tools/python/gpu_check_report.py and benches/torch_baseline.py into DEST
#       (default .gpu/ in the repository root, which must be git-ignored, e.g.
#       `echo /.gpu/ >> .git/info/exclude`). Fails if DEST exceeds 64 MiB.
#
#   DEST/gpu-check.sh device [DIR]      on the GPU machine (python3 with torch, no cargo), with
#       DEST inside a checkout (DEST/../ffi is used). DIR is where the carried files are
#       (default: this script's directory). In at most BUDGET_S seconds (default 450) it runs:
#         1. sae-bench info                       device, how kernels loaded
#         2. sae-bench run, twice, interleaved    BENCH_SHAPES (default paper, paper-cublas,
#            with torch_baseline.py between     paper-overlap), REPS (default 5) repetitions,
#                                                 nvidia-smi sampling clocks, power, temperature
#                                                 and clock event reasons every 100 ms
#         3. GPU tests (SAE_REQUIRE_GPU=1)        integration binary, cuda_parity:: and
#                                                 cuda_shards_memory:: tests
#         4. sae-bench verify                     GPU against the CPU reference
#         5. compute-sanitizer memcheck, racecheck on `sae-bench verify --quick`
#         6. info / verify --quick with --force-nvrtc (the NVRTC fallback)
#         7. ffi/tests/gpu_device_ptr.sh          C ABI device pointers with torch CUDA tensors
#       A step that would start past the budget is skipped and counted as a failure. Everything
#       is bundled into $OUT/gpu-check.tar.gz (OUT defaults to ./gpu-out) beside
#       $OUT/summary.txt (steps, the nvidia-smi trace's min/median/max, the rounds' spread).
#       Exit status: 0 when every step passed, 1 otherwise.
#
# The GPU machine needs driver 580 / CUDA 13.0, cuBLAS 13 and torch (libnvrtc from its
# nvidia wheels for step 6).
set -uo pipefail

# The pinned compute-sanitizer: the CUDA 13.0 line, as tools/install-nvcc.sh pins nvcc.
SANITIZER_PIN="nvidia-cuda-sanitizer-api==13.0.85"
CARRY_LIMIT=$((64 << 20))

usage() {
    sed -n '2,32p' "$0" >&2
    exit 2
}

prepare() {
    set -e
    local root dest nvcc target test_bin stage
    root="$(cd "$(dirname "$0")/.." && pwd)"
    dest="${1:-$root/.gpu}"
    cd "$root"
    nvcc="$(bash tools/install-nvcc.sh | tail -n 1)"
    # SAE_REQUIRE_GPU=1 compiles the GPU tests in (build.rs: cfg sae_gpu_tests); without it a
    # build on this GPU-less machine would list them as ignored on the GPU machine too. Set for
    # every build so the library is compiled once.
    export NVCC="$nvcc" SAE_REQUIRE_NVCC=1 SAE_REQUIRE_GPU=1
    cargo build --release --bin sae-bench
    cargo build --release -p sae-engine-ffi
    test_bin="$(cargo test --release --test integration --no-run --message-format=json 2>/dev/null \
        | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "integration":
        print(m["executable"])' | tail -n 1)"
    [ -x "$test_bin" ] || { echo "gpu-check: the integration test binary was not built" >&2; exit 1; }
    target="${CARGO_TARGET_DIR:-$root/target}"
    stage="$(mktemp -d "${TMPDIR:-/tmp}/sae-gpu-prepare.XXXXXX")"
    trap 'rm -rf "$stage"' EXIT
    # Debug info stripped and xz-compressed: the carried tree is limited to 64 MiB.
    objcopy --strip-debug "$target/release/sae-bench" "$stage/sae-bench"
    objcopy --strip-debug "$test_bin" "$stage/integration"
    objcopy --strip-debug "$target/release/libsae_engine_ffi.so" "$stage/libsae_engine_ffi.so"
    mkdir -p "$dest"
    rm -f "$dest"/nvidia_cuda_sanitizer_api-*.whl
    tar -C "$stage" -cJf "$dest/bins.tar.xz.tmp" sae-bench integration libsae_engine_ffi.so
    mv "$dest/bins.tar.xz.tmp" "$dest/bins.tar.xz"
    "${PYTHON:-python3}" -m pip download --quiet --disable-pip-version-check --no-deps \
        "$SANITIZER_PIN" -d "$dest"
    cp tools/gpu-check.sh tools/python/gpu_check_report.py benches/torch_baseline.py "$dest/"
    git rev-parse HEAD > "$dest/COMMIT" 2>/dev/null || true
    check_size "$dest"
    ls -la "$dest"
}

# Fails when DIR is larger than what the device machine is sent.
check_size() {
    local size
    size="$(du -sb "$1" | cut -f1)"
    if [ "$size" -gt "$CARRY_LIMIT" ]; then
        echo "gpu-check: $1 holds $((size >> 20)) MiB, more than the 64 MiB that can be carried" >&2
        return 1
    fi
    echo "gpu-check: $1 holds $((size >> 20)) MiB (limit 64)"
}

device() {
    local here out budget reps shapes work run bin log steps deadline status san smi_pid
    here="${1:-$(cd "$(dirname "$0")" && pwd)}"
    out="${OUT:-$PWD/gpu-out}"
    budget="${BUDGET_S:-450}"
    reps="${REPS:-5}"
    shapes="${BENCH_SHAPES:-paper,paper-cublas,paper-overlap}"
    case "$budget$reps" in *[!0-9]*) echo "gpu-check: BUDGET_S and REPS must be whole numbers" >&2; exit 2 ;; esac
    [ -f "$here/bins.tar.xz" ] || { echo "gpu-check: $here/bins.tar.xz not found (run prepare first)" >&2; exit 2; }
    work="$(mktemp -d "${TMPDIR:-/tmp}/sae-gpu-check.XXXXXX")"
    run="$work/run"
    bin="$work/bin"
    mkdir -p "$out" "$run" "$bin"
    log="$run/log.txt"
    steps="$run/steps.tsv"
    : > "$steps"
    deadline=$((SECONDS + budget))
    status=0
    export PYTHONUNBUFFERED=1

    # step NAME LIMIT CMD...: runs CMD for at most LIMIT seconds (and never past the budget,
    # 20 s of which are kept for the summary and the archive), logged, status in steps.tsv.
    step() {
        local name="$1" limit="$2" left t0 rc
        shift 2
        left=$((deadline - 20 - SECONDS))
        if [ "$left" -lt 5 ]; then
            echo "=== $name: SKIPPED, the ${budget} s budget is spent" | tee -a "$log"
            printf '%s\tskipped\t0\n' "$name" >> "$steps"
            status=1
            return
        fi
        [ "$limit" -le "$left" ] || limit=$left
        echo "=== $name (limit ${limit} s): $*" | tee -a "$log"
        t0=$SECONDS
        timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$log"
        rc=${PIPESTATUS[0]}
        echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
        printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$steps"
        [ "$rc" -eq 0 ] || status=1
    }

    tar -xJf "$here/bins.tar.xz" -C "$bin"
    san=""
    for whl in "$here"/nvidia_cuda_sanitizer_api-*.whl; do
        [ -f "$whl" ] || continue
        python3 -m zipfile -e "$whl" "$work/sanitizer"
        san="$work/sanitizer/nvidia/cu13/bin/compute-sanitizer"
        chmod +x "$san"
    done
    {
        date -u
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
        cat "$here/COMMIT" 2>/dev/null
    } 2>&1 | tee -a "$log"

    step info 30 "$bin/sae-bench" info --json "$run/info.json"
    # The measurements first, so a slow verify cannot cost them the budget; nvidia-smi samples
    # the whole benchmark phase in the background.
    nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active \
        --format=csv -lms 100 > "$run/smi.csv" 2> "$run/smi.err" &
    smi_pid=$!
    step bench-1 150 "$bin/sae-bench" run --shapes "$shapes" --reps "$reps" --no-stream --json "$run/bench-1.json"
    step torch 120 python3 "$here/torch_baseline.py" --shapes paper --reps "$reps" --json "$run/torch.json"
    step bench-2 150 "$bin/sae-bench" run --shapes "$shapes" --reps "$reps" --no-stream --json "$run/bench-2.json"
    kill "$smi_pid" 2>/dev/null
    wait "$smi_pid" 2>/dev/null
    # The trace is part of the check: header plus at least one sample.
    if [ "$(wc -l < "$run/smi.csv")" -lt 2 ]; then
        echo "=== smi-trace: no samples ($(head -c 300 "$run/smi.err"))" | tee -a "$log"
        printf 'smi-trace	no-samples	0
' >> "$steps"
        status=1
    fi

    step gpu-tests 120 env SAE_REQUIRE_GPU=1 "$bin/integration" cuda_ --test-threads=1
    step verify 150 "$bin/sae-bench" verify --json "$run/verify.json"
    if [ -n "$san" ]; then
        step memcheck 150 "$san" --tool memcheck --error-exitcode 1 \
            "$bin/sae-bench" verify --quick --json "$run/verify-memcheck.json"
        step racecheck 150 "$san" --tool racecheck --error-exitcode 1 \
            "$bin/sae-bench" verify --quick --json "$run/verify-racecheck.json"
    else
        echo "=== sanitizer: no nvidia_cuda_sanitizer_api wheel in $here" | tee -a "$log"
        printf 'sanitizer\tmissing\t0\n' >> "$steps"
        status=1
    fi
    # The run-time fallback of a build without nvcc: fatbins ignored, every module compiled by
    # NVRTC (torch's nvidia wheels provide libnvrtc), quick verify.
    local cache="$work/nvrtc-cache"
    step nvrtc-info 60 env SAE_CACHE_DIR="$cache" "$bin/sae-bench" --force-nvrtc info --json "$run/info-nvrtc.json"
    step nvrtc-verify 120 env SAE_CACHE_DIR="$cache" "$bin/sae-bench" --force-nvrtc verify --quick --json "$run/verify-nvrtc.json"
    step ffi-device-ptr 90 env OUT="$run" bash "$here/../ffi/tests/gpu_device_ptr.sh" "$bin/libsae_engine_ffi.so"

    bundle "$here" "$work" "$out"
    rm -rf "$work"
    exit $status
}

# bundle HERE WORK OUT: the summary of WORK/run (printed and written to OUT/summary.txt, also
# inside the archive) and OUT/gpu-check.tar.gz holding WORK/run, each written under a
# temporary name and renamed when complete.
bundle() {
    local here="$1" work="$2" out="$3"
    if ! python3 "$here/gpu_check_report.py" "$work/run" > "$work/run/summary.txt" 2> "$work/report.err"; then
        { echo "summary failed:"; cat "$work/report.err"; } >> "$work/run/summary.txt"
        status=1
    fi
    cat "$work/run/summary.txt"
    tar -C "$work" -czf "$out/.gpu-check.tar.gz.tmp" run
    mv "$out/.gpu-check.tar.gz.tmp" "$out/gpu-check.tar.gz"
    cp "$work/run/summary.txt" "$out/.summary.txt.tmp"
    mv "$out/.summary.txt.tmp" "$out/summary.txt"
}

case "${1:-}" in
prepare)
    shift
    prepare "$@"
    ;;
device)
    shift
    device "$@"
    ;;
*)
    usage
    ;;
esac
