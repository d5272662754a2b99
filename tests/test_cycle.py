"Integration tests of run_plasticity on a tiny random GPT-2: phases, resume equality, stop, callbacks, log schema."
import copy, json, threading
import pytest, torch
from torch.utils.data import DataLoader
from sentinel_nb.models import tiny_model, TINY_VOCAB
from sentinel_nb.data import collate_blocks
from sentinel_nb.cycle import run_plasticity, RunControl, PlasticityConfig
from sentinel_nb.log import ExperimentLog, validate_log

@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

def blocks(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [{'input_ids': torch.randint(1, TINY_VOCAB, (16,), generator=g).tolist()} for _ in range(n)]

DATA = {'train': DataLoader(blocks(32, 0), batch_size=4, collate_fn=collate_blocks),
        'validation': DataLoader(blocks(8, 1), batch_size=4, collate_fn=collate_blocks)}
SMALL = dict(steps=4, warmup_max_steps=4, warmup_window=3, score_batches=1, eval_batches=1, ramp_steps=2, boost_steps=3,
             prune_level=0.25, grow_ratio=0.5)

def test_two_cycles_equal_one_plus_resume_plus_one(tmp_path):
    model = tiny_model('gpt2', n_layer=2, n_head=4)
    straight = run_plasticity(copy.deepcopy(model), DATA, out=tmp_path/'a', cycles=2, progress=False, **SMALL)
    resumed = run_plasticity(copy.deepcopy(model), DATA, out=tmp_path/'b', resume=tmp_path/'a'/'cycle-1', cycles=2,
                             progress=False, **SMALL)
    for kind in ('prune', 'grow', 'learn'):
        a, b = straight.filter(kind, cycle=2)[0], resumed.filter(kind, cycle=2)[0]
        assert a.heads == b.heads, kind
        for k, v in a.metrics_after.items(): assert b.metrics_after[k] == pytest.approx(v, rel=1e-6), (kind, k)
    assert resumed.filter('resume')[0].cycle == 2
    assert not straight.filter('resume')

def test_phases_callbacks_and_log_file(tmp_path):
    phases, events, steps = [], [], []
    log = run_plasticity(tiny_model('gpt2'), DATA, out=tmp_path, cycles=1, progress=False, on_phase=lambda p, c: phases.append(p),
                         on_event=events.append, on_step=steps.append, **SMALL)
    assert phases == ['warmup', 'score', 'prune', 'measure', 'grow', 'learn']
    assert [e.kind for e in events] == [e.kind for e in log.events]
    assert len(steps) == log.filter('learn')[0].info['steps'] + log.filter('warmup')[0].info['steps']
    saved = json.loads((tmp_path/'log.json').read_text())
    validate_log(saved)
    assert ExperimentLog.load(tmp_path/'log.json').to_dict() == log.to_dict()
    assert (tmp_path/'cycle-1'/'model.safetensors').exists() and (tmp_path/'cycle-1'/'head_state.json').exists()
    pr = log.filter('prune')[0]
    assert len(pr.heads) == 2 and set(pr.scores) >= {'gradient', 'entropy'} and pr.threshold is not None

def test_stop_between_steps_leaves_a_checkpoint(tmp_path):
    ctl = RunControl(); n = []
    def on_step(rec):
        n.append(rec)
        if len(n) == 2: ctl.stop()
    log = run_plasticity(tiny_model('gpt2'), DATA, out=tmp_path, cycles=2, progress=False, control=ctl, on_step=on_step, **SMALL)
    assert len(n) == 2 and log.events[-2].kind == 'stop' and log.events[-1].kind == 'checkpoint'
    assert (tmp_path/'stopped'/'model.safetensors').exists()
    assert not log.filter('prune', cycle=2)

def test_pause_blocks_until_resumed(tmp_path):
    ctl = RunControl(); ctl.pause()
    threading.Timer(0.5, ctl.resume).start()
    log = run_plasticity(tiny_model('gpt2'), DATA, cycles=1, progress=False, control=ctl, **SMALL)
    assert log.events[-1].kind == 'end'

def test_resume_with_other_settings_is_refused(tmp_path):
    run_plasticity(tiny_model('gpt2'), DATA, out=tmp_path, cycles=1, progress=False, **SMALL)
    with pytest.raises(ValueError, match='different settings'):
        run_plasticity(tiny_model('gpt2'), DATA, resume=tmp_path/'cycle-1', cycles=1, progress=False, **{**SMALL, 'prune_level': 0.5})

@pytest.mark.parametrize('bad', [dict(prune_level=1.0), dict(prune_level=-0.1), dict(cycles=0), dict(grow_ratio=2.0)])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        run_plasticity(tiny_model('gpt2'), DATA, progress=False, **{**SMALL, **bad})
