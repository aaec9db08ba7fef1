#!/usr/bin/env bash
# Builds the Python wheel (ffi/python: the ctypes package plus libsae_engine_ffi compiled by
# setuptools-rust), installs it into a clean venv that has numpy only, and runs
# ffi/python/examples/encode_numpy.py there with no variable pointing at the library
# (SAE_ENGINE_LIB and CARGO_TARGET_DIR unset): the package must find its own copy.
# .ci/run calls it. SAE_ENGINE_WHEEL_PROFILE=release checks the release build users get
# (default here: debug, which reuses the test build's dependencies).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo="$PWD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
profile="${SAE_ENGINE_WHEEL_PROFILE:-debug}"

echo "== python wheel ($profile build of ffi/)"
start=$(date +%s)
SAE_ENGINE_WHEEL_PROFILE="$profile" python3 -m pip wheel -q --disable-pip-version-check \
    --no-deps -w "$work/dist" ./ffi/python
wheel="$(ls "$work"/dist/sae_engine-*.whl)"
echo "built $(basename "$wheel") ($(du -h "$wheel" | cut -f1)) in $(( $(date +%s) - start )) s"

python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check numpy
"$py" -m pip install -q --disable-pip-version-check --no-index --no-deps "$wheel"

# An SAE to run, written with numpy by the binding tests' fixture.
"$py" -c "import sys; sys.path.insert(0, sys.argv[1]); from fixture import TopKFixture; TopKFixture().write(sys.argv[2])" \
    "$repo/ffi/python/tests" "$work/sae"

cd "$work"   # away from the checkout: nothing on sys.path but the venv
env -u SAE_ENGINE_LIB -u CARGO_TARGET_DIR "$py" - <<'PY'
import sys
import sae_engine
lib = sae_engine.find_library()
assert lib.startswith(sys.prefix), f"library {lib} is not the installed package's ({sys.prefix})"
assert sae_engine.__file__.startswith(sys.prefix), sae_engine.__file__
print("installed:", sae_engine.__file__, "library:", lib, "version", sae_engine.version())
PY
env -u SAE_ENGINE_LIB -u CARGO_TARGET_DIR "$py" "$repo/ffi/python/examples/encode_numpy.py" \
    "$work/sae" --backend cpu
echo "wheel check passed"
