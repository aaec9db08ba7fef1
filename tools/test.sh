#!/usr/bin/env bash
# The whole test suite: Rust (library, CLI end-to-end, C ABI, GPU parity tests that are
# listed as ignored without a GPU, see README "Tests and benchmarks") and the Python
# packages (numpy only).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace

# Python tests run against the shared library built from ffi/ and read our files with
# independent readers (numpy, safetensors, gguf). A private venv keeps the machine clean.
venv=.venv-py
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check numpy safetensors gguf
cargo build -p sae-engine-ffi
export SAE_ENGINE_LIB="$(pwd)/target/debug/libsae_engine_ffi.so"
export SAE_BIN="$(pwd)/target/debug/sae"
for suite in ffi/python/tests tools/python/tests; do
    if [ -d "$suite" ]; then
        echo "== python: $suite"
        "$venv/bin/python" -m unittest discover -s "$suite" -v
    fi
done
