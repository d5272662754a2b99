#!/usr/bin/env bash
# Install, then run every check CI runs:
#   1. the package is what the notebooks export, the notebooks are clean, README.md is what index.ipynb makes
#   2. every notebook runs as a test (nbdev_test; cells flagged `slow` only with SENTINEL_SLOW=1)
#   3. pytest on tests/ (tests marked `slow` only with SENTINEL_SLOW=1)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install.sh

echo "== 1. notebooks, package and README in sync"
snapshot() { git status --porcelain --untracked-files=all -- nbs sentinel_nb README.md; git diff -- nbs sentinel_nb README.md; }
before=$(snapshot | md5sum)
nbdev_clean
nbdev_export
python3 tools/readme.py
after=$(snapshot | md5sum)
if [ "$before" != "$after" ]; then
  echo "FAIL: nbdev_export / nbdev_clean / tools/readme.py changed files: the package, notebooks or README"
  echo "were not what the notebooks make. Run them, review 'git diff', commit notebooks and outputs together."
  git status --short -- nbs sentinel_nb README.md
  exit 1
fi
echo "in sync"

echo "== 2. notebooks as tests"
flags=""; marker="not slow"
if [ "${SENTINEL_SLOW:-0}" = "1" ]; then flags="--flags slow"; marker=""; fi
# two notebooks at a time, one torch thread each: two threads each would oversubscribe the two cores
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} nbdev_test --n_workers "${SENTINEL_NB_WORKERS:-2}" --timing $flags

echo "== 3. pytest"
python3 -m pytest tests -q -m "$marker" -p no:cacheprovider
