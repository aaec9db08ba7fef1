#!/usr/bin/env bash
# Same-run CPU benchmarks against PyTorch; writes benches/results/<UTC date>-cpu/.
#
#   bash benches/cpu_vs_torch.sh                 # both stages, about 15 minutes on 2 busy cores
#   STAGES=shapes bash benches/cpu_vs_torch.sh   # only encode/decode/stats shapes (~6 min)
#   STAGES=stats  bash benches/cpu_vs_torch.sh   # only `sae stats` end to end (~9 min)
#
# Stages:
#   shapes  benches/shapes_vs_torch.py: the benches/cpu.rs shapes, ours and
#           benches/torch_cpu_baseline.py alternated (ROUNDS rounds, REPS runs each).
#   stats   benches/stats_vs_torch.py run: `sae stats` on a GIB GiB dump (SAELens TopK SAE,
#           d 4096, 8192 latents, k 32: 256 MiB of f32 weights) against the researcher's
#           torch script, alternated STATS_REPS times each, statistics compared, peak RSS
#           recorded.
# Both sides get THREADS threads (RAYON_NUM_THREADS, OMP_NUM_THREADS, torch.set_num_threads).
# PYTHON: an interpreter with torch, numpy and safetensors (default: the real-model test's
# venv from tools/real-model/setup.sh). Scratch data goes to a temporary folder under
# TMPDIR (default /tmp; needs GIB + 0.3 GiB) and is removed at the end, also when killed.
set -euo pipefail
cd "$(dirname "$0")/.."
. tools/real-model/env.sh
PYTHON="${PYTHON:-$realmodel_python}"
STAGES="${STAGES:-stats shapes}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
REPS="${REPS:-3}"
GIB="${GIB:-2}"
STATS_REPS="${STATS_REPS:-2}"
OUT="${OUT:-benches/results/$(date -u +%F)-cpu}"

"$PYTHON" -c 'import torch, numpy, safetensors' || {
    echo "cpu_vs_torch: $PYTHON cannot import torch, numpy and safetensors (set PYTHON)" >&2
    exit 1
}
mkdir -p "$OUT"

# Release builds, then where they are (cargo prints the bench executable's path).
cargo build --release --bin sae >&2
bench_bin=$(cargo bench --bench cpu --no-run --message-format=json 2>/dev/null |
    "$PYTHON" -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cpu" and m.get("executable"):
        print(m["executable"])')
target_dir="${CARGO_TARGET_DIR:-target}"
sae_bin="$target_dir/release/sae"
[ -x "$bench_bin" ] && [ -x "$sae_bin" ] || { echo "cpu_vs_torch: release builds not found" >&2; exit 1; }

{
    echo "date: $(date -u '+%F %T UTC')"
    echo "commit: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src tools benches || echo ' (with uncommitted changes)')"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o -w -E 'avx2|fma|avx512f' | sort -u | tr '\n' ' ')"
    echo "memory: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "torch: $("$PYTHON" -c 'import torch; print(torch.__version__, "threads default", torch.get_num_threads())')"
    echo "threads: $THREADS (RAYON_NUM_THREADS, OMP_NUM_THREADS, torch.set_num_threads)"
    echo "sae: $sae_bin"
    echo "bench: $bench_bin"
} | tee "$OUT/machine.txt"

# The scripts' own checks first (small shapes, seconds): the generated files are what
# `sae stats` reads, and the torch script computes the statistics `sae stats` computes.
SAE_BIN="$sae_bin" SAE_REQUIRE_TORCH=1 "$PYTHON" -m unittest discover -s tools/python/tests \
    -p test_bench_stats.py

for stage in $STAGES; do
    case "$stage" in
    shapes)
        "$PYTHON" benches/shapes_vs_torch.py --bench-bin "$bench_bin" --results "$OUT" \
            --rounds "$ROUNDS" --reps "$REPS" --threads "$THREADS"
        ;;
    stats)
        work=$(mktemp -d "${TMPDIR:-/tmp}/sae-stats-bench.XXXXXX")
        trap 'rm -rf "$work"' EXIT
        "$PYTHON" benches/stats_vs_torch.py run --sae-bin "$sae_bin" --work "$work" --results "$OUT" \
            --gib "$GIB" --reps "$STATS_REPS" --threads "$THREADS"
        rm -rf "$work"
        ;;
    *)
        echo "cpu_vs_torch: unknown stage '$stage' (shapes, stats)" >&2
        exit 2
        ;;
    esac
done
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
echo "results in $OUT"
