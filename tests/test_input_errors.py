"""Inputs and runs that used to end badly (issue 18, part 4), through `sentinel_nb.cli.main` where a user meets them: a
corpus that names nothing, a named pipe, a non-UTF-8 text, a learning rate that diverges in the last step; and a
`--distill` run stopped and resumed, which must be the uninterrupted run to the last bit."""
import copy, json, os, re, subprocess, sys
from pathlib import Path
import pytest, torch
from sentinel_nb.data import load_corpus, _split_contiguous
from sentinel_nb.models import tiny_model, attention_implementation
from sentinel_nb.cycle import run_plasticity, RunControl, TRAINER_FILE
from sentinel_nb.cli import main
from test_bad_inputs import error_line, TINY_RUN, text_file   # text_file: a module fixture (Macbeth, 30,000 characters)
from tiny_data import tiny_data


# --- 1. a corpus that names nothing ---------------------------------------------------------------------------------

@pytest.mark.parametrize('bad', [None, '', '  ', 0, ['shakespeare']])
def test_load_corpus_refuses_what_names_no_corpus(bad):
    with pytest.raises(ValueError, match=re.escape(f"corpus must be a built-in corpus ('shakespeare', 'milton'), the path of a .txt")) as e:
        load_corpus(bad)                                      # None used to go to the hub as the dataset 'None'
    assert "'owner/name:config'" in str(e.value) and str(e.value).endswith(f"got {bad!r}")

@pytest.mark.parametrize('value', ['', ' '])
def test_an_empty_corpus_flag_is_refused_before_the_model_loads(capsys, tmp_path, value):
    out = tmp_path/'o'
    error_line(capsys, ['run', '--corpus', value, '--out', str(out), *TINY_RUN], '--corpus must be a built-in corpus', f'got {value!r}')
    assert not out.exists()
    error_line(capsys, ['eval', '--corpus', value], '--corpus must be a built-in corpus')


# --- 2. a named pipe as the corpus ------------------------------------------------------------------------------------

CLI = 'import sys; from sentinel_nb.cli import main; sys.exit(main(sys.argv[1:]))'

def test_a_named_pipe_as_corpus_is_refused_not_read(tmp_path):
    fifo, out = tmp_path/'text.txt', tmp_path/'o'
    os.mkfifo(fifo)
    # in a child process with a time limit: a read of the pipe would wait for a writer forever
    try: r = subprocess.run([sys.executable, '-c', CLI, 'run', '--corpus', str(fifo), '--out', str(out), *TINY_RUN],
                            capture_output=True, text=True, timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    except subprocess.TimeoutExpired: pytest.fail(f'sentinel run --corpus {fifo} (a FIFO) hung')
    assert r.returncode == 2, r.stderr
    assert r.stderr == (f"sentinel: error: corpus file {fifo} is a named pipe (FIFO), not a regular file: it is not read (it "
                        f"could wait forever). Save the text to a file first (e.g. `cat {fifo} > corpus.txt`) and give that file\n")
    assert r.stdout == '' and not out.exists()


# --- 3. a text that is not UTF-8 ----------------------------------------------------------------------------------------

def test_a_latin1_corpus_is_refused_with_the_offset_and_the_fix(capsys, tmp_path, text_file):
    text = text_file.read_text() + '\n\nThe café of Élise, à bientôt.\n'
    bad = tmp_path/'latin.txt'; bad.write_bytes(text.encode('latin-1'))    # a few accented letters, one byte each
    at = len(text.encode('latin-1').split(b'\xe9')[0])                       # the first é
    out = tmp_path/'o'
    line = error_line(capsys, ['run', '--corpus', str(bad), '--out', str(out), *TINY_RUN], f'{bad} is not UTF-8',
                      f"byte {at} (line {text[:text.index('é')].count(chr(10)) + 1}) is 0xe9",
                      f"iconv -f latin1 -t utf-8 {bad} > {tmp_path/'latin-utf8.txt'}")
    assert not out.exists(), line
    error_line(capsys, ['eval', '--corpus', str(bad)], f'{bad} is not UTF-8')

def test_a_valid_utf8_corpus_loads_as_before(tmp_path, text_file):
    text = text_file.read_text() + '\n\nThe café of Élise, à bientôt. 東京\n'
    good = tmp_path/'utf8.txt'; good.write_bytes(text.encode('utf-8'))
    loaded = load_corpus(good)
    before = _split_contiguous([good.read_bytes().decode('utf-8', errors='replace')])   # the lenient decode it replaced
    assert {s: d['text'] for s, d in loaded.items()} == {s: d['text'] for s, d in before.items()}
    assert 'café of Élise' in loaded['test']['text'][0] and '\ufffd' not in ''.join(loaded['test']['text'])


# --- 4. a learning rate that diverges in the last step -------------------------------------------------------------------

@pytest.mark.parametrize('extra, phase, step', [
    ([], 'learn, cycle 1', 1),                                      # the one learning step of the run
    (['--steps', '2'], 'learn, cycle 1', 2),
    (['--warmup-max-steps', '1', '--steps', '0'], 'warmup', 1),     # the one warm-up step
])
def test_a_run_diverging_in_its_last_step_stops_as_diverged(capsys, tmp_path, text_file, extra, phase, step):
    "lr 1e6: the weights stay finite (~1e6) but the logits are NaN; sampling used to crash inside torch.multinomial."
    out = tmp_path/'o'
    rc = main(['run', '--corpus', str(text_file), '--out', str(out), *TINY_RUN, '--lr', '1e6', *extra])
    o, err = capsys.readouterr()
    assert rc == 1, err
    assert 'internal error' not in err and 'Traceback' not in err and 'probability tensor' not in err, err
    assert err.splitlines()[-1] == (f"sentinel: training diverged: validation perplexity is nan at step {step} ({phase}) "
                                    "(lower --lr or use --stability-level 2)"), err
    result = json.loads(o)
    assert result['diverged'] is True and result['stopped'].startswith('training diverged')
    stop = [json.loads(l) for l in (out/'events.jsonl').read_text().splitlines()][-1]
    assert stop['kind'] == 'stop' and stop['info']['diverged']


def test_logits_that_cannot_be_sampled_stop_the_run_even_with_a_finite_perplexity():
    "`evaluate` notes `not_finite` when the prompts' logits are NaN though the validation perplexity is finite: diverged too."
    from types import SimpleNamespace
    from sentinel_nb.cycle import PlasticityRunner, PlasticityConfig
    runner = SimpleNamespace(position={'phase': 'learn'}, global_step=7, cfg=PlasticityConfig(), diverged=None)
    assert not PlasticityRunner._diverged_after(runner, {'perplexity': 50.0, 'samples': []}, 'learn, cycle 1')
    assert runner.diverged is None and runner.position == {'phase': 'learn'}
    assert PlasticityRunner._diverged_after(runner, {'perplexity': 50.0, 'samples': [], 'not_finite': 'NaN'}, 'learn, cycle 1')
    assert runner.position is None and runner.diverged == ("training diverged: the logits of the sample prompts are not finite "
                                                           "at step 7 (learn, cycle 1) (lower --lr or use --stability-level 2)")


# --- 5. a distilled run stopped and resumed ---------------------------------------------------------------------------

DISTILL = dict(cycles=2, steps=6, warmup_max_steps=6, warmup_window=2, score_batches=1, eval_batches=1, ramp_steps=2,
               boost_steps=3, prune_level=0.25, grow_ratio=0.5, distill=True, dense_control=False, progress=False)

def test_a_distilled_run_stopped_and_resumed_is_bit_identical(tmp_path):
    """The teacher of an uninterrupted run is copied in cycle 1 from the model, which the run has switched to SDPA; a
    resumed run rebuilt it from the warm-up checkpoint before that switch and kept the model's eager attention: losses
    off by ~2e-7 here, 1.3e-5 in perplexity on sentinel-tiny."""
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        model, data = tiny_model('gpt2', n_layer=2, n_head=4), tiny_data()
        assert attention_implementation(model) == 'eager' and model.config.attn_pdrop > 0   # not the run's 'sdpa'; dropout on
        straight = run_plasticity(copy.deepcopy(model), data, out=tmp_path/'straight', **DISTILL)
        learn1 = straight.filter('learn', 1)[0]
        at = learn1.step - learn1.info['steps'] + 3                 # 3 steps into the first learn phase, the teacher in use
        ctl = RunControl()
        def on_step(rec):
            if rec['global_step'] == at: ctl.stop()
        stopped = run_plasticity(copy.deepcopy(model), data, out=tmp_path/'run', control=ctl, on_step=on_step, **DISTILL)
        assert stopped.filter('stop')[0].step == at and (tmp_path/'run'/'stopped'/TRAINER_FILE).exists()
        resumed = run_plasticity(copy.deepcopy(model), data, out=tmp_path/'run', resume=True, **DISTILL)
    finally: torch.set_num_threads(n)
    for kind in ('learn', 'prune', 'grow'):
        a, b = straight.filter(kind), resumed.filter(kind)
        assert len(a) == len(b) == 2, kind
        for x, y in zip(a, b):                                      # exactly: ==, not approx
            assert x.metrics_after == y.metrics_after and x.info.get('losses') == y.info.get('losses'), (kind, x.cycle)
            assert x.to_dict()['heads'] == y.to_dict()['heads'], (kind, x.cycle)
