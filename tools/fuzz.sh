#!/usr/bin/env bash
# Builds every cargo-fuzz target (fuzz/fuzz_targets/*.rs) and runs each coverage-guided
# for a bounded time from its committed seed corpus (fuzz/corpus/<target>/); any crash,
# panic, timeout or out-of-memory fails the script. Installs the nightly toolchain and
# cargo-fuzz when missing (cargo-fuzz is cached in ~/.cargo/bin).
#
#   bash tools/fuzz.sh              # every target, FUZZ_SECONDS (30) each
#   FUZZ_SECONDS=300 bash tools/fuzz.sh npz
#
# New inputs found go to a scratch directory (the committed corpus stays as it is); a
# crashing input is saved as fuzz/artifacts/<target>/crash-* to reproduce with
#   cargo +nightly fuzz run <target> fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-30}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# The parsers never launch a kernel: skip the CUDA compiler (CI requires it elsewhere).
export SAE_NO_NVCC=1
unset SAE_REQUIRE_NVCC

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Debug assertions on: an unchecked overflow is a crash, as in a debug build.
cargo +nightly fuzz build --debug-assertions

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    seeds="fuzz/corpus/$t"
    if [ ! -d "$seeds" ] || [ -z "$(ls -A "$seeds")" ]; then
        echo "fuzz target $t has no seed corpus in $seeds (run python3 fuzz/make_corpus.py)" >&2
        exit 1
    fi
    mkdir -p "$scratch/$t" "fuzz/artifacts/$t"
    echo "== fuzz $t (${seconds}s)"
    start=$SECONDS
    log="$scratch/$t.log"
    if ! cargo +nightly fuzz run --debug-assertions "$t" "$scratch/$t" "$seeds" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1; then
        tail -n 80 "$log" >&2
        echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E "^Done|stat::number_of_executed_units|stat::peak_rss_mb" "$log" || tail -n 5 "$log"
    echo "fuzz $t: no crash in $((SECONDS - start))s"
done
