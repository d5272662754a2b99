"""`sentinel bench --profile quick`: the pipeline runs every method once and writes its table (a check that it works,
not of what the numbers are: the evidence is the full profile, committed in bench/results)."""
import json
import pytest, torch
from sentinel_nb.cli import main
from sentinel_nb.benchmark import CORE_METHODS, summarize, curve_area

@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

def test_quick_profile_runs_every_method_and_writes_the_table(tmp_path, capsys):
    assert main(['bench', '--profile', 'quick', '--out', str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr()[0])
    res = json.loads(open(out['results']).read())
    rows = res['rows']
    assert [r['method'] for r in rows] == list(CORE_METHODS)                   # (a)-(f)
    pruned = [r for r in rows if r['method'] != 'dense']
    assert len({r['active_heads'] for r in pruned}) == 1 and pruned[0]['active_heads'] < rows[0]['active_heads']   # one head count
    assert len({r['train_steps'] for r in rows}) == 1                            # the same training for all
    md = open(out['table']).read()
    assert md.count('| sentinel-tiny |') == len(CORE_METHODS) and '× dense' in md
    assert not list(tmp_path.glob('*.rows.jsonl'))                              # the partial rows went into the JSON
    s = summarize(rows)
    assert s.over_dense[s.method == 'dense'].tolist() == [1.0] and curve_area(s).area.isna().all()   # one fraction: no area

def test_bad_bench_arguments_are_refused(capsys):
    assert main(['bench', '--profile', 'huge']) == 2
    assert 'invalid choice' in capsys.readouterr().err

def test_sweep_cli_refuses_before_work(capsys, tmp_path):
    assert main(['bench', '--variants', 'defaults', '--out', str(tmp_path)]) == 2
    assert '--variants is a setting of the sweep' in capsys.readouterr().err
    assert main(['bench', '--sweep', '--methods', 'random', '--out', str(tmp_path)]) == 2
    assert '--methods is not a setting of the sweep' in capsys.readouterr().err
    assert main(['bench', '--sweep', '--fractions', '1.5', '--out', str(tmp_path)]) == 2
    assert 'fraction must be in (0, 1)' in capsys.readouterr().err
    assert not list(tmp_path.iterdir())                                          # nothing written

def test_sweep_quick_writes_its_table(tmp_path):
    "Two variants, one seed, the quick profile's settings: the rows, the ratio to each run's dense control, the table."
    assert main(['bench', '--sweep', '--profile', 'quick', '--seeds', '0', '--variants', 'defaults', 'grow_ratio 0.5', '--out', str(tmp_path)]) == 0
    res = json.loads(next(tmp_path.glob('bench-sweep-*.json')).read_text())
    assert [r['variant'] for r in res['rows']] == ['defaults', 'grow_ratio 0.5']
    for r in res['rows']: assert abs(r['val_over_control'] - r['val_perplexity'] / r['val_control_perplexity']) < 1e-9
    assert res['meta']['settings']['run']['steps'] == 8                         # the quick profile's
    assert "--variants 'defaults' 'grow_ratio 0.5'" in res['meta']['command']
    assert res['summary'][0]['val_over_control'] <= res['summary'][1]['val_over_control']
    md = next(tmp_path.glob('bench-sweep-*.md')).read_text()
    assert '| defaults | (none) | 1 |' in md and '| grow_ratio 0.5 | {"grow_ratio": 0.5} | 1 |' in md
