"Figures from the log (sentinel_nb.viz) on the log of a small real run: head map, timeline, decisions, history, metrics."
import numpy as np, pytest, torch
from sentinel_nb.models import tiny_model
from sentinel_nb.gates import HeadGates, HeadState
from sentinel_nb.prune import prune_heads
from sentinel_nb.cycle import run_plasticity, RunControl
from sentinel_nb.log import ExperimentLog, Event, LogFileError
from sentinel_nb.viz import (as_log, head_map, timeline, score_maps, decision_table, decision_view, decision_views,
                             head_history, head_history_map, metrics_table, head_label, STATE_NAMES)

from tiny_data import tiny_data   # shared tiny loaders (tests/tiny_data.py)

DATA = tiny_data()
SMALL = dict(steps=4, warmup_max_steps=4, warmup_window=2, score_batches=1, eval_batches=1, ramp_steps=6, boost_steps=3,
             grace_steps=8, prune_level=0.25, grow_ratio=0.5, protected=[[0, 0]], progress=False)

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    n = torch.get_num_threads(); torch.set_num_threads(1)
    out = tmp_path_factory.mktemp('viz')/'run'
    log = run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), DATA, out=out, cycles=2, **SMALL)
    torch.set_num_threads(n)
    return log, out

def snaps(log): return [e for e in log.events if e.head_state is not None]

def test_head_map_cells_are_where_the_log_says(run):
    log, _ = run
    fig = head_map(log)
    assert len(fig.frames) == len(snaps(log)) == len(fig.layout.sliders[0].steps)
    for frame, e in zip(fig.frames, snaps(log)):
        z = np.array(frame.data[0].z)
        assert z.shape == (2, 4)
        np.testing.assert_array_equal(z == STATE_NAMES.index('pruned'), ~np.array(e.head_state['active']))
        assert z[0, 0] in (STATE_NAMES.index('protected'), STATE_NAMES.index('pruned'))   # the run's protected head
    grow = log.filter('grow')[0]
    frame = fig.frames[[i for i, e in enumerate(snaps(log)) if e is grow][0]]
    for l, h in grow.heads:    # just grown: still ramping, ramp shown
        assert frame.data[0].z[l][h] == STATE_NAMES.index('grown, ramping') and 'ramp 0.00' in frame.data[0].text[l][h]

def test_timeline_one_marker_per_prune_and_grow(run):
    log, _ = run
    fig = timeline(log)
    by_name = {t.name: t for t in fig.data if t.name in ('prune', 'grow')}
    for kind in ('prune', 'grow'):
        assert list(by_name[kind].x) == [e.step for e in log.filter(kind)]
        for text, e in zip(by_name[kind].text, log.filter(kind)):
            assert all(head_label(*h) in text for h in e.heads) and 'perplexity before' in text
    assert sum(s.type == 'line' for s in fig.layout.shapes) == len(log.filter('prune')) + len(log.filter('grow'))
    loss_steps = [x for t in fig.data if t.name == 'loss (per step)' for x in t.x]
    assert loss_steps == list(range(1, log.events[-1].step + 1))
    ppl = next(t for t in fig.data if t.name == 'perplexity')
    assert len(ppl.x) == len([e for e in log.events if e.kind in ('measure', 'warmup', 'learn')]) + len(log.filter('prune'))

def test_decision_views_chosen_heads_are_the_events(run):
    log, _ = run
    views = decision_views(log)
    assert sorted(views) == [i for i, e in enumerate(log.events) if e.kind in ('prune', 'grow')]
    for i, fig in views.items():
        chosen = next(t for t in fig.data if t.name == 'chosen')
        assert list(chosen.x) == [head_label(*h) for h in log.events[i].heads]
    i_prune = [i for i, e in enumerate(log.events) if e.kind == 'prune']
    first, second = (decision_table(log, i).set_index('label') for i in i_prune)
    assert first.outcome['L0.H0'] == 'protected'
    assert first.attrs['threshold'] == log.events[i_prune[0]].threshold
    grace = [head_label(*h) for h in log.events[i_prune[1]].info['grace']]
    assert grace and all(second.outcome[h] == 'grace period' for h in grace)
    ranked = second[second.outcome != 'not a candidate'].sort_values('rank')
    assert list(ranked.score) == sorted(ranked.score)          # gradient: lowest pruned first

def test_layer_minimum_is_read_off_the_log_and_a_logged_reason_wins():
    g = HeadGates(tiny_model('gpt2', n_layer=2, n_head=4))
    scores = {'gradient': torch.tensor([[0.1, 0.2, 0.9, 0.8], [0.5, 0.6, 0.7, 0.4]])}
    pr = prune_heads(g, scores, count=2, min_heads_per_layer=3)
    log = ExperimentLog({'plasticity': {'min_heads_per_layer': 3}},
                        [Event('prune', heads=pr.heads, scores=scores, threshold=pr.threshold, head_state=g.state.state_dict(),
                               info={'strategy': 'gradient', 'grace': []})])
    g.remove()
    t = decision_table(log, 0).set_index('label')
    assert pr.heads == [(0, 0), (1, 3)] and t.outcome['L0.H1'] == 'layer at minimum' and t.outcome['L1.H0'] == 'kept'
    log.events[0].info['skipped'] = {'1,0': 'protected'}
    assert decision_table(log, 0).set_index('label').outcome['L1.H0'] == 'protected'

def test_score_maps_and_history(run):
    log, _ = run
    prunes = log.filter('prune')
    fig = score_maps(log)
    assert len(fig.data) == sum(len(e.scores) for e in prunes)
    assert len(fig.layout.shapes) == sum(len(e.heads) * len(e.scores) for e in prunes)
    hist = head_history(log)
    assert hist.shape == (8, len(snaps(log)))
    for col, e in zip(hist.columns, snaps(log)):
        assert set(hist.index[hist[col] == 'pruned']) == {head_label(l, h) for l, h in np.argwhere(~np.array(e.head_state['active']))}
    assert np.array(head_history_map(log).data[0].z).shape == hist.shape

def test_metrics_table_rows_match_the_measurements(run):
    log, _ = run
    mt = metrics_table(log)
    measured = [e for e in log.events if e.kind in ('measure', 'warmup', 'learn', 'control')]   # the dense control's rows last
    assert list(mt.kind) == [e.kind for e in measured] and list(mt.step) == [e.step for e in measured]
    assert list(mt.perplexity) == [e.metrics_after['perplexity'] for e in measured]
    assert mt['perplexity_vs_baseline_%'][0] == 0 and mt.active_heads[0] == 8
    assert mt.active_heads[2] == 8 - len(log.filter('prune')[0].heads)
    assert list(mt.active_heads[mt.kind == 'control']) == [8] * len(log.filter('control')) > []   # the control is dense

def test_a_run_folder_and_its_files_give_the_same_figures(run):
    log, out = run
    for src in (out, out/'log.json', out/'events.jsonl'):
        assert [e.to_dict() for e in as_log(src).events] == [e.to_dict() for e in log.events]
        assert head_map(src).to_json() == head_map(log).to_json()
        assert decision_view(src, 4).to_json() == decision_view(log, 4).to_json()
    assert metrics_table(out).equals(metrics_table(log))

def test_a_stopped_run_still_draws(tmp_path):
    ctl, steps = RunControl(), []
    def on_step(rec):
        steps.append(rec)
        if rec['phase'] == 'learn 1' and rec['step'] >= 2: ctl.stop('enough')
    log = run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), DATA, out=tmp_path, cycles=2, control=ctl, on_step=on_step, **SMALL)
    assert log.filter('stop') and not log.filter('learn')
    fig = timeline(tmp_path)                      # events.jsonl: everything up to the stop
    assert len(next(t for t in fig.data if t.name == 'prune').x) == 1
    assert len(head_map(tmp_path).frames) == len(snaps(log))
    assert list(metrics_table(tmp_path).kind) == ['measure', 'warmup', 'measure']

def test_clear_errors():
    with pytest.raises(LogFileError, match='neither events.jsonl nor log.json'): as_log(__import__('tempfile').mkdtemp())
    with pytest.raises(TypeError, match='give an ExperimentLog'): as_log(3)
    empty = ExperimentLog({}, [Event('start')])
    with pytest.raises(ValueError, match='no event with a head_state'): head_map(empty)
    with pytest.raises(ValueError, match='decision views are for prune and grow'): decision_table(empty, 0)
    with pytest.raises(IndexError, match='outside the log'): decision_table(empty, 5)
    with pytest.raises(ValueError, match='no prune event'): score_maps(empty)

def test_smollm2_sized_head_map_stays_small():
    st = HeadState.fresh(30, 9)
    events = []
    for i in range(12):                          # a 2-cycle run's events with a head state, on 270 heads
        st.active[i % 30, i % 9] = False; st.step = i
        events.append(Event('measure', step=i, head_state=st.state_dict()))
    fig = head_map(ExperimentLog({}, events))
    assert len(fig.frames) == 12 and np.array(fig.frames[0].data[0].z).shape == (30, 9)
    assert len(fig.to_json()) < 1_000_000
