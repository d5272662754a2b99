"""Behaviour unchanged (issue 19): the runner's decisions and measurements equal those recorded before its refactoring
(tests/data, written by `python tests/golden.py record` on the code before). The demo's run is slow (2 minutes)."""
import json, os
import pytest, torch
from golden import DATA, summary, differences, tiny_run
from sentinel_nb.cli import main

def test_a_tiny_run_decides_and_measures_as_before():
    want = json.loads((DATA/'golden-tiny.json').read_text())
    assert differences(want, summary(tiny_run())) == []

def test_differences_notices_a_changed_number_and_a_changed_head():
    want = json.loads((DATA/'golden-tiny.json').read_text())
    got = json.loads(json.dumps(want))
    i = next(i for i, e in enumerate(got) if e['kind'] == 'prune')
    got[i]['heads'] = got[i]['heads'][1:]
    j = next(i for i, e in enumerate(got) if e['after'].get('perplexity'))
    got[j]['after']['perplexity'] *= 1 + 1e-5
    found = differences(want, got)
    assert len(found) == 2 and any('heads' in f for f in found) and any('perplexity' in f for f in found), found

@pytest.mark.slow
def test_the_demo_decides_and_measures_as_before(tmp_path):
    "The README's demo (`sentinel run --model sentinel-tiny --corpus shakespeare --cycles 2`), one torch thread as recorded."
    from sentinel_nb.log import ExperimentLog
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try: assert main(['run', '--model', 'sentinel-tiny', '--corpus', 'shakespeare', '--cycles', '2', '--out', str(tmp_path/'demo'), '--no-report']) == 0
    finally: torch.set_num_threads(n)
    want = json.loads((DATA/'golden-demo.json').read_text())
    assert differences(want, summary(ExperimentLog.load(tmp_path/'demo'/'log.json'))) == []
