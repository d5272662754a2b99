#!/usr/bin/env bash
# Install, then run the demo on the offline default model (sentinel-tiny) and corpus (Shakespeare).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh
sentinel eval --model sentinel-tiny --corpus shakespeare --split test "$@"
