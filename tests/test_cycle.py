"Integration tests of run_plasticity on a tiny random GPT-2: phases, resume equality, stop, callbacks, log schema, settings."
import copy, json, math, threading
import pytest, torch
from torch.utils.data import DataLoader
from sentinel_nb.models import tiny_model, TINY_VOCAB
from sentinel_nb.data import collate_blocks
from sentinel_nb.gates import HeadGates
from sentinel_nb.prune import prune_heads
from sentinel_nb.metrics import forward_logits
from sentinel_nb.cycle import run_plasticity, RunControl, PlasticityConfig, PlasticityRunner, loss_plateaued, dense_copy
from sentinel_nb.log import ExperimentLog, validate_log, RunFolderError

@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

from tiny_data import tiny_data   # shared tiny loaders (tests/tiny_data.py)

DATA = tiny_data()
SMALL = dict(steps=4, warmup_max_steps=4, warmup_window=2, score_batches=1, eval_batches=1, ramp_steps=2, boost_steps=3,
             prune_level=0.25, grow_ratio=0.5)

def test_two_cycles_equal_one_plus_resume_plus_one(tmp_path):
    model = tiny_model('gpt2', n_layer=2, n_head=4)
    straight = run_plasticity(copy.deepcopy(model), DATA, out=tmp_path/'a', cycles=2, progress=False, **SMALL)
    run_plasticity(copy.deepcopy(model), DATA, out=tmp_path/'b', cycles=1, progress=False, **SMALL)
    resumed = run_plasticity(copy.deepcopy(model), DATA, out=tmp_path/'b', resume=tmp_path/'b'/'cycle-1', cycles=2,
                             progress=False, **SMALL)
    for kind in ('prune', 'grow', 'learn'):
        a, b = straight.filter(kind, cycle=2)[0], resumed.filter(kind, cycle=2)[0]
        assert [list(h) for h in a.heads] == [list(h) for h in b.heads], kind
        for k, v in a.metrics_after.items(): assert b.metrics_after[k] == pytest.approx(v, rel=1e-6), (kind, k)
    assert resumed.filter('resume')[0].cycle == 2
    assert not straight.filter('resume')

def test_phases_callbacks_and_log_file(tmp_path):
    phases, events, steps = [], [], []
    log = run_plasticity(tiny_model('gpt2'), DATA, out=tmp_path, cycles=1, progress=False, on_phase=lambda p, c: phases.append(p),
                         on_event=events.append, on_step=steps.append, **SMALL)
    assert phases == ['warmup', 'score', 'prune', 'measure', 'grow', 'learn', 'control']   # then the dense control
    assert [e.kind for e in events] == [e.kind for e in log.events]
    assert len(steps) == log.filter('learn')[0].info['steps'] + log.filter('warmup')[0].info['steps']
    saved = json.loads((tmp_path/'log.json').read_text())
    validate_log(saved)
    assert ExperimentLog.load(tmp_path/'log.json').to_dict() == log.to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cycle-1', 'events.jsonl', 'log.json', 'run.json', 'warmup']
    assert (tmp_path/'cycle-1'/'model.safetensors').exists() and (tmp_path/'cycle-1'/'head_state.json').exists()
    pr = log.filter('prune')[0]
    assert len(pr.heads) == 2 and set(pr.scores) >= {'gradient', 'entropy'} and pr.threshold is not None

def test_stop_between_steps_leaves_a_checkpoint(tmp_path):
    ctl = RunControl(); n = []
    def on_step(rec):
        n.append(rec)
        if len(n) == 2: ctl.stop('enough')
    log = run_plasticity(tiny_model('gpt2'), DATA, out=tmp_path, cycles=2, progress=False, control=ctl, on_step=on_step, **SMALL)
    assert len(n) == 2 and log.events[-2].kind == 'stop' and log.events[-1].kind == 'checkpoint'
    assert log.events[-2].info['reason'] == 'enough'
    assert (tmp_path/'stopped'/'model.safetensors').exists()
    assert not log.filter('warmup') and not log.filter('prune')    # stopped inside warm-up: nothing logged as done

def test_pause_blocks_until_resumed(tmp_path):
    ctl = RunControl(); ctl.pause()
    threading.Timer(0.5, ctl.resume).start()
    log = run_plasticity(tiny_model('gpt2'), DATA, cycles=1, progress=False, control=ctl, **SMALL)
    assert log.events[-1].kind == 'end'

def test_resume_with_other_settings_is_refused(tmp_path):
    run_plasticity(tiny_model('gpt2'), DATA, out=tmp_path, cycles=1, progress=False, **SMALL)
    with pytest.raises(RunFolderError, match=r'config.prune_level: 0.25 -> 0.5'):
        run_plasticity(tiny_model('gpt2'), DATA, resume=tmp_path/'cycle-1', cycles=1, progress=False, **{**SMALL, 'prune_level': 0.5})

BAD = [  # (setting, message it must give)
    (dict(cycles=0), 'cycles must be an integer >= 1, got 0'), (dict(cycles='3'), "cycles must be an integer >= 1, got '3'"),
    (dict(cycles=2.0), 'cycles must be an integer'), (dict(cycles=True), 'cycles must be an integer'),
    (dict(prune_level=1.0), r'prune_level must be a finite number in \[0, 1\), got 1.0'), (dict(prune_level=-0.1), 'prune_level'),
    (dict(prune_level='0.3'), 'prune_level must be a finite number'), (dict(grow_ratio=2.0), r'grow_ratio must be a finite number in \[0, 1\]'),
    (dict(prune_strategy='loudest'), "prune_strategy must be one of 'gradient'.*got 'loudest'"),
    (dict(grow_strategy='magic'), "grow_strategy must be one of .*got 'magic'"), (dict(grow_init='zeros'), "grow_init must be one of 'fresh', 'clone', got 'zeros'"),
    (dict(protected=[[0]]), r'protected must be a list of \[layer, head\] pairs'), (dict(protected=[[0, -1]]), 'protected must be'),
    (dict(protected='0:1'), 'protected must be'), (dict(protected=[['0', '1']]), 'protected must be'),
    (dict(stability_level=3), 'stability_level must be one of 0, 1, 2, got 3'), (dict(warmup_window=0), 'warmup_window must be an integer >= 1'),
    (dict(warmup_threshold=-1e-3), 'warmup_threshold must be a finite number >= 0'), (dict(seed=-1), r'seed must be an integer in \[0, 4294967295\], got -1'),
    (dict(seed=2**32), 'seed must be'), (dict(seed='0'), 'seed must be'), (dict(score_batches=0), 'score_batches must be an integer >= 1'),
    (dict(eval_batches=0), 'eval_batches must be an integer >= 1'), (dict(steps=-1), 'steps must be an integer >= 0, got -1'),
    (dict(ramp_steps=-1), 'ramp_steps must be'), (dict(boost_steps=-1), 'boost_steps must be'), (dict(grace_steps=-1), 'grace_steps must be'),
    (dict(warmup_max_steps=-1), 'warmup_max_steps must be'), (dict(lr=0), 'lr must be a finite number > 0, got 0'),
    (dict(lr=float('inf')), 'lr must be a finite number > 0, got inf'), (dict(lr=float('nan')), 'lr must be'), (dict(lr='1e-4'), 'lr must be'),
    (dict(lr_boost=0.5), 'lr_boost must be a finite number >= 1, got 0.5'), (dict(max_prune_per_cycle=0), 'max_prune_per_cycle must be None or an integer >= 1'),
    (dict(min_heads_per_layer=0), 'min_heads_per_layer must be an integer >= 1, got 0'), (dict(max_new_tokens=-1), 'max_new_tokens must be an integer >= 0'),
    (dict(prompts='To be'), 'prompts must be a list of strings'), (dict(prompts=[1, 2]), 'prompts must be a list of strings'),
    (dict(distill='yes'), "distill must be True or False, got 'yes'"), (dict(patience=0), 'patience must be None or an integer >= 1, got 0'),
    (dict(eval_every=0), 'eval_every must be an integer >= 1'), (dict(mixed_precision='fp8'), "mixed_precision must be one of 'no', 'fp16', 'bf16', 'auto', got 'fp8'"),
    (dict(physical=1), 'physical must be True or False, got 1'), (dict(dense_control='yes'), "dense_control must be True or False"),
    (dict(target_fraction=1.0), r'target_fraction must be a finite number in \(0, 1\)'), (dict(target_fraction=0.), 'target_fraction must be'),
    (dict(target_fraction=0.3, grow_ratio=1.), 'target_fraction needs grow_ratio < 1'),
    (dict(target_schedule='sometimes'), "target_schedule must be one of 'linear', 'once', got 'sometimes'")]

@pytest.mark.parametrize('bad,message', BAD)
def test_every_setting_is_checked(bad, message):
    with pytest.raises(ValueError, match=message): PlasticityConfig(**bad)

def test_good_settings_are_normalised():
    cfg = PlasticityConfig(protected=[(0, 1)], prompts=('a', 'b'), max_prune_per_cycle=2, patience=3, lr=1, seed=2**32 - 1)
    assert cfg.protected == [[0, 1]] and cfg.prompts == ['a', 'b'] and cfg.lr == 1.0 and isinstance(cfg.lr, float)

@pytest.mark.parametrize('bad,message', [(dict(protected=[[0, 9]]), r'protected heads \[\[0, 9\]\] are outside the model'),
                                         (dict(protected=[[5, 0]]), 'outside the model'),
                                         (dict(min_heads_per_layer=9), "min_heads_per_layer must be <= the model's 4 heads per layer, got 9")])
def test_model_dependent_settings_are_checked_before_any_work(tmp_path, bad, message):
    model = tiny_model('gpt2', n_layer=2, n_head=4)
    with pytest.raises(ValueError, match=message):
        run_plasticity(model, DATA, out=tmp_path/'run', progress=False, **{**SMALL, **bad})
    assert not (tmp_path/'run').exists() and not model._forward_pre_hooks and all(not m._forward_pre_hooks for m in model.modules())

def test_bad_data_is_refused():
    with pytest.raises(ValueError, match="data must be a dict of DataLoaders with 'train' and 'validation'"):
        run_plasticity(tiny_model('gpt2'), {'train': DATA['train']}, progress=False, **SMALL)
    empty = DataLoader([], batch_size=4, collate_fn=collate_blocks)
    with pytest.raises(ValueError, match=r"data\['validation'\] must be a DataLoader over at least one block"):
        run_plasticity(tiny_model('gpt2'), {**DATA, 'validation': empty}, progress=False, **SMALL)

def test_the_runner_uses_the_gates_already_on_the_model():
    model = tiny_model('gpt2', n_layer=2, n_head=4)
    g = HeadGates(model).install()
    log = run_plasticity(model, DATA, cycles=1, progress=False, **SMALL)
    assert log.runner.gates is g and HeadGates.of(model) is g and g.installed          # reused, and left installed
    assert g.state.state_dict() == log.filter('learn')[0].to_dict()['head_state']   # the run's pruning is on the user's gates
    g.remove()
    # gates the runner installs itself are removed at the end
    log = run_plasticity(model, DATA, cycles=1, progress=False, **SMALL)
    assert not log.runner.gates.installed and pytest.raises(ValueError, HeadGates.of, model)

def test_dense_copy_is_not_pruned_with_the_student():
    model = tiny_model('gpt2', n_layer=2, n_head=4)
    ids = torch.randint(1, TINY_VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    with HeadGates(model) as g:
        teacher = dense_copy(model)
        assert HeadGates.of(model) is g and g.installed                          # the student keeps its gates
        t0, s0 = forward_logits(teacher, ids), forward_logits(model, ids)
        prune_heads(g, torch.rand(2, 4, generator=torch.Generator().manual_seed(0)), count=3)
        assert torch.equal(forward_logits(teacher, ids), t0)                     # the teacher did not move
        assert not torch.allclose(forward_logits(model, ids), s0)               # the student did
        naive = copy.deepcopy(model)                                            # what a plain deepcopy would have made
        assert torch.allclose(forward_logits(naive, ids), forward_logits(model, ids))

def test_a_distilled_run_completes(tmp_path):
    log = run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), DATA, out=tmp_path, cycles=2, distill=True, progress=False, **SMALL)
    assert log.events[-1].kind == 'end' and math.isfinite(log.filter('learn', 2)[0].metrics_after['perplexity'])
    assert log.runner.teacher is not None and not log.runner.teacher._forward_pre_hooks

@pytest.mark.parametrize('level', [0, 1])
def test_a_diverging_run_says_so(level):
    log = run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), DATA, cycles=1, progress=False,
                         **{**SMALL, 'lr': 1e8, 'warmup_max_steps': 20, 'warmup_window': 10, 'stability_level': level})
    stop = log.events[-1]
    assert stop.kind == 'stop' and stop.info['diverged'] and stop.info['reason'].startswith('training diverged: ')
    assert '(lower --lr or use --stability-level 2)' in stop.info['reason'] and not log.filter('warmup')

def test_a_huge_but_finite_loss_is_reported_as_diverged():
    # lr=1e3: the losses stay finite (no skipped steps) but the validation NLL overflows math.exp: perplexity inf
    log = run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), DATA, cycles=1, progress=False, **{**SMALL, 'lr': 1e3})
    stop = log.events[-1]
    assert [e.kind for e in log.events] == ['start', 'measure', 'stop'] and stop.info['diverged']
    assert stop.info['reason'].startswith('training diverged: validation perplexity is inf at step ')
    assert '(warmup)' in stop.info['reason'] and '--lr' in stop.info['reason']

def test_a_control_stopped_before_the_run_does_not_stop_it():
    ctl = RunControl(); ctl.stop('the last run'); ctl.pause()
    ctl.reset()
    assert (ctl.stopped, ctl.paused, ctl.reason, ctl.check()) == (False, False, None, False)
    ctl.stop('the last run')                                             # a panel's control, left stopped by the last run
    log = run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), DATA, cycles=1, control=ctl, progress=False, **SMALL)
    assert log.events[-1].kind == 'end' and not log.filter('stop') and not ctl.stopped
    # a stop asked after the run was made (here while the model loads, before run() starts) is obeyed at once
    runner = PlasticityRunner(tiny_model('gpt2', n_layer=2, n_head=4), DATA, config=PlasticityConfig(cycles=1, **SMALL),
                              control=ctl, progress=False)
    ctl.stop('pressed during set-up')
    try: log = runner.open().run()
    finally: runner.release()
    assert log.filter('stop')[0].info['reason'] == 'pressed during set-up' and not log.filter('warmup')

def test_patience_stops_a_learn_phase_early():
    log = run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), DATA, cycles=1, progress=False,
                         **{**SMALL, 'lr': 1e-2, 'steps': 30, 'patience': 1, 'eval_every': 2})
    learn = log.filter('learn')[0]
    assert learn.info['stopped_by'] == 'early_stop' and learn.info['steps'] < 30 and len(learn.info['evals']) >= 2
    without = run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), DATA, cycles=1, progress=False,
                             **{**SMALL, 'lr': 1e-2, 'steps': 30})
    assert without.filter('learn')[0].info['steps'] == 30 and without.filter('learn')[0].info['stopped_by'] == 'steps'

def test_warmup_plateau_rule_on_noisy_losses():
    g = torch.Generator().manual_seed(1)
    noise = lambda n, s: (torch.randn(n, generator=g, dtype=torch.float64) * s).tolist()
    falling = [10 * math.exp(-i / 250) + e for i, e in enumerate(noise(80, 0.5))]   # -0.4%/step under 5% noise
    flat = [6 + e for e in noise(80, 0.3)]
    assert not any(loss_plateaued(falling[:n], 20) for n in range(1, 81))
    assert loss_plateaued(flat, 20) and not loss_plateaued(flat[:39], 20)           # needs two windows
    log = run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), DATA, cycles=1, progress=False,
                         **{**SMALL, 'warmup_max_steps': 12, 'warmup_window': 4})
    w = log.filter('warmup')[0]
    # the run stopped exactly where the rule first said plateau (checked before each step), or ran out of steps without it
    losses = w.info['losses']
    first = next((n for n in range(1, len(losses) + 1) if loss_plateaued(losses[:n], 4)), None)
    if w.info['stopped_by'] == 'plateau': assert first == len(losses) < 12, (first, len(losses))
    else: assert w.info['stopped_by'] == 'steps' and first is None and len(losses) == 12, (w.info['stopped_by'], first)
    assert w.info['plateau'] == (first is not None) and 'improvement' in w.info

def test_mixed_precision_auto_resolves_for_the_device():
    log = run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), DATA, cycles=1, progress=False, mixed_precision='auto', **SMALL)
    assert log.runner.mixed_precision == 'no' and log.events[-1].kind == 'end'   # CPU: no mixed precision
    log = run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), DATA, cycles=1, progress=False, mixed_precision='bf16', **SMALL)
    assert log.events[-1].kind == 'end' and math.isfinite(log.filter('learn')[0].metrics_after['perplexity'])

@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_refused_before_any_work(tmp_path, dtype):
    "Training half-precision weights loses updates (or NaNs them): refused with the fix, before anything is written."
    model = tiny_model('gpt2', n_layer=2, n_head=4).to(dtype)
    with pytest.raises(ValueError, match='optimizer steps on half-precision weights break'):
        run_plasticity(model, DATA, out=tmp_path/'run', cycles=1, progress=False, **SMALL)
    assert not (tmp_path/'run').exists()
    assert not model.transformer.h[0].attn.c_proj._forward_pre_hooks       # no gates left behind

def test_prune_events_say_why_heads_were_kept():
    "Cycle 2 protects cycle 1's newcomers (grace period) and the user's protected heads: the prune event says which is which."
    log = run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), DATA, cycles=2, progress=False, protected=[[0, 0]],
                         **{**SMALL, 'grace_steps': 100})
    first, second = log.filter('prune')
    assert first.info['skipped'].get('0,0') == 'protected'
    grown = [f'{l},{h}' for l, h in log.filter('grow', cycle=1)[0].heads]
    assert grown and all(second.info['skipped'].get(k) == 'grace period' for k in grown), (grown, second.info['skipped'])
    assert second.info['skipped'].get('0,0') == 'protected'
