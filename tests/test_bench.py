"The benchmark script runs end to end (slow: `SENTINEL_SLOW=1`); its numbers are for reading, not asserting."
import json, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent

@pytest.mark.slow
def test_bench_quick_run_writes_every_table(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT/'bench'/'bench.py'), '--models', 'sentinel-tiny', '--quick', '--out', str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(next(tmp_path.glob('bench-*.json')).read_text())
    assert [(row['pruned_%'], row['batch']) for row in res['inference']] == [(9, 1), (9, 16), (31, 1), (31, 16), (50, 1), (50, 16)]
    assert all(row['max_abs_logit_diff_masked_vs_physical'] <= 1e-5 for row in res['inference'])     # the same model, smaller
    assert all(row['params_mb_physical'] < row['params_mb_dense'] for row in res['inference'])
    assert {'gate_overhead', 'eager_over_sdpa', 'score_over_step'} <= set(res['training'][0])
    assert [row['pruned_%'] for row in res['scaler']] == [9, 31, 50, 88] and all(0 < row['scaler_share_%'] < 100 for row in res['scaler'])
    md = next(tmp_path.glob('bench-*.md')).read_text()
    assert '| model | pruned | batch |' in md and 'physical step / masked step' in md
    assert all(row['physical_step_over_masked'] > 0 for row in res['scaler'])
