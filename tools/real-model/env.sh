# Sourced by setup.sh and test.sh: where the real-model test keeps what it installs and builds.
#   SAE_REALMODEL_VENV   the Python environment (default ~/.cache/sae-engine/realmodel)
#   SAE_REALMODEL_CACHE  the rebuilt model folder and other derived files
#                        (default ~/.cache/sae-engine/realmodel-cache)
realmodel_venv="${SAE_REALMODEL_VENV:-$HOME/.cache/sae-engine/realmodel}"
realmodel_cache="${SAE_REALMODEL_CACHE:-$HOME/.cache/sae-engine/realmodel-cache}"
realmodel_model="$realmodel_cache/SmolLM2-135M-Instruct"
realmodel_python="$realmodel_venv/bin/python"
