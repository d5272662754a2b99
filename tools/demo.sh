#!/usr/bin/env bash
# Install, then run the demo on the offline default model (sentinel-tiny) and corpus (Shakespeare).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
# --overwrite: running the demo again replaces the previous demo run (a run folder is never replaced silently)
sentinel run --model sentinel-tiny --corpus shakespeare --cycles 2 --out runs/demo --overwrite "$@"
