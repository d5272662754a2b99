"""`sentinel run --out OUT --resume` alone continues a stopped run with the run's own settings (read from run.json) and ends
exactly where an uninterrupted run ends; settings given again win, and a different data setting is refused."""
import json
import pytest, torch
from sentinel_nb.cli import main
from sentinel_nb.data import load_corpus
import sentinel_nb.cycle as cycle
from cli_stop import ctrl_c_at     # Ctrl-C inside a CLI run (tests/cli_stop.py)

# deliberately not the defaults, so that a resume which forgot them would differ
RUN = ['--cycles', '1', '--steps', '4', '--warmup-max-steps', '0', '--block-size', '32', '--batch-size', '2', '--max-blocks', '6',
       '--eval-batches', '1', '--score-batches', '1', '--max-new-tokens', '2', '--prompts', 'To be', '--prune-level', '0.25',
       '--lr', '0.0003', '--seed', '3']

@pytest.fixture(autouse=True, scope='module')   # every run compared below uses one thread (numerics depend on it)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

@pytest.fixture(scope='module')
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp('corpus')/'macbeth.txt'
    p.write_text(load_corpus('shakespeare')['validation']['text'][0][:30_000])
    return p

def run_cli(capsys, argv):
    rc = main(argv); out, err = capsys.readouterr()
    return rc, (json.loads(out) if out.strip().startswith('{') else None), err

def test_resume_alone_finishes_the_run_with_its_own_settings(capsys, tmp_path, text_file, monkeypatch):
    rc, straight, _ = run_cli(capsys, ['run', '--out', str(tmp_path/'straight'), '--corpus', str(text_file), *RUN])
    assert rc == 0 and straight['stopped'] is None
    real = ctrl_c_at(monkeypatch, 'learn 1', 2)
    out = tmp_path/'stopped'
    rc, stopped, err = run_cli(capsys, ['run', '--out', str(out), '--corpus', str(text_file), *RUN])
    assert rc == 130 and stopped['stopped'] == cycle.INTERRUPTED, err
    assert 'learn-1' not in stopped['perplexity']
    monkeypatch.setattr(cycle, 'run_plasticity', real)
    rc, resumed, err = run_cli(capsys, ['run', '--out', str(out), '--resume'])          # nothing else given
    assert rc == 0, err
    assert "resuming with the run's own settings" in err and 'continue it with' not in err, err
    assert resumed['stopped'] is None and not resumed['diverged']
    assert resumed['perplexity']['learn-1'] == pytest.approx(straight['perplexity']['learn-1'], rel=1e-6)
    assert resumed['perplexity']['learn-1'] != pytest.approx(resumed['perplexity']['measure-1'], rel=1e-4)   # learning happened
    # a finished run extended by a cycle: only --cycles is given again
    rc, longer, err = run_cli(capsys, ['run', '--out', str(out), '--resume', '--cycles', '2'])
    assert rc == 0 and 'learn-2' in longer['perplexity'], err
    assert longer['perplexity']['learn-1'] == pytest.approx(straight['perplexity']['learn-1'], rel=1e-6)

def test_resume_with_another_data_setting_is_refused(capsys, tmp_path, text_file):
    out = tmp_path/'run'
    assert main(['run', '--out', str(out), '--corpus', str(text_file), *RUN]) == 0
    before = sorted(p.name for p in out.iterdir()); capsys.readouterr()
    rc, _, err = run_cli(capsys, ['run', '--out', str(out), '--resume', '--block-size', '16'])
    assert rc == 2 and 'sentinel: error:' in err and 'block_size: 32 -> 16' in err, err
    assert sorted(p.name for p in out.iterdir()) == before
