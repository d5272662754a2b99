"""Runs that prune physically: gates, scores and update scaling on a physically pruned model equal the masked model's
(property-tested over random head patterns), a physical run takes the masked run's decisions and measures the same,
heads keep their identity in the log, and a physical run stops, resumes and saves like any other."""
import copy, json
import pytest, torch
from hypothesis import given, settings, strategies as st, HealthCheck
from sentinel_nb.models import tiny_model, head_counts, layer_heads, head_weight_slices
from sentinel_nb.gates import HeadGates, HeadUpdateScaler
from sentinel_nb.importance import head_importance
from sentinel_nb.grow import grow_heads
from sentinel_nb.prune import restore_heads
from sentinel_nb.physical import LAYOUT_FILE, layout_of, is_physical, prune_physically, insert_heads, grow_physically, load_pruned, save_pruned
from sentinel_nb.cycle import run_plasticity, RunControl
from sentinel_nb.viz import metrics_table
from sentinel_nb.views import load_checkpoint_model
from test_physical import CASES, GQA6, model, IDS, logits   # the tiny models of every family and their shared inputs
from tiny_data import tiny_data

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

GATED_CASES = ['gpt2', 'opt', 'gpt_neox', 'bloom', 'llama', 'llama_6q2kv', 'llama_6q2kv_compact', 'qwen3_6q2kv']
BATCHES = [{'input_ids': IDS}, {'input_ids': IDS.flip(1)}]

def twins(case, active, gate):
    """The case's model twice with the same gates: masked (`active`) and physically pruned to it, gates left installed.
    A head that stays is mid-ramp as a grown head with a boost, so ramps and boosts are on the line too."""
    masked, phys = model(case), model(case)
    gm, gp = HeadGates(masked).install(), HeadGates(phys).install()
    for g in (gm, gp):
        g.gates.copy_(gate); g.state.active.copy_(active)
        l, h = active.nonzero()[0].tolist()                        # the first live head: grown 1 step ago, ramping over 4
        g.state.grown_at[l, h], g.state.ramp_steps[l, h], g.state.lr_boost[l, h], g.state.boost_steps[l, h] = 0, 4, 3., 5
        g.set_step(1)
    removed = [tuple(x) for x in (~active).nonzero().tolist()]
    kv = CASES[case][2] if layout_of(phys).q_kv is not None else None
    if removed: prune_physically(phys, removed, kv_cache=kv)       # a list: the gates stay installed and follow
    return (masked, gm), (phys, gp)

@pytest.mark.parametrize('case', GATED_CASES)
def test_gates_scores_and_updates_on_a_pruned_model_equal_the_masked_model(case):
    L, H = head_counts(model(case))[:2]
    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(st.booleans(), min_size=L * H, max_size=L * H).filter(any),
           st.lists(st.floats(0.25, 1.5), min_size=L * H, max_size=L * H))
    def check(keep, gate):
        active = torch.tensor(keep).view(L, H)
        (mm, gm), (pm, gp) = twins(case, active, torch.tensor(gate).view(L, H))
        assert gp.state.active.tolist() == active.tolist()
        bound = 1e-5 * max(1., logits(mm).abs().max().item())
        assert (logits(pm) - logits(mm)).abs().max().item() <= bound
        # scores: gradient (through the gates) and entropy (the attention weights) of every live head
        sm, sp = (head_importance(m, BATCHES, methods=('gradient', 'entropy', 'magnitude')) for m in (mm, pm))
        for k in sm: assert torch.allclose(sp[k][active], sm[k][active], rtol=1e-4, atol=1e-6), k
        assert (sp['magnitude'][~active] == 0).all()                # a removed head has no weights
        # one step with the update scaler (the boosted grown head, everything else plain); SGD: AdamW would turn
        # rounding-level gradients into full-size steps, on both sides alike but not equally
        for m, g in ((mm, gm), (pm, gp)):
            opt = torch.optim.SGD(m.parameters(), lr=0.5); sc = HeadUpdateScaler(g, opt)
            m(IDS, labels=IDS).loss.backward(); opt.step(); sc.remove()   # eval mode: no dropout draws
        assert (logits(pm) - logits(mm)).abs().max().item() <= 10 * bound
        for l, h in active.nonzero().tolist():                      # each live head's weights moved the same
            wm, wp = head_weight_slices(mm, l, h), head_weight_slices(pm, l, h)
            for part in ('q', 'o'): assert torch.allclose(getattr(wp, part), getattr(wm, part), atol=1e-5), (l, h, part)
        gm.remove(); gp.remove()
    check()

def test_growth_into_removed_slots_equals_growth_into_masked_slots():
    active = torch.tensor([[True, False, False, True, True, True], [False, False, False, True, True, False],
                           [True, True, True, True, True, True]])
    (mm, gm), (pm, gp) = twins('llama_6q2kv', active, torch.ones(3, 6))
    grown_m = grow_heads(gm, count=3, strategy='gradient', batches=BATCHES, seed=1)
    cands = [tuple(x) for x in (~gp.state.active).nonzero().tolist()]
    insert_heads(pm, cands)                                         # zero weights: scored and grown like masked slots
    grown_p = grow_heads(gp, count=3, strategy='gradient', batches=BATCHES, seed=1)
    prune_physically(pm, [c for c in cands if c not in grown_p.heads])
    assert grown_p.heads == grown_m.heads
    assert gp.state.active.tolist() == gm.state.active.tolist()
    assert (logits(pm) - logits(mm)).abs().max().item() <= 1e-5 * max(1., logits(mm).abs().max().item())
    assert layout_of(pm).heads == [layer_heads(pm, l) for l in range(3)]
    assert all(h in layer_heads(pm, l) for l, h in grown_p.heads)   # back under their own ids
    with pytest.raises(ValueError, match='removed physically'): restore_heads(gp, [c for c in cands if c not in grown_p.heads][:1])

def test_gates_refuse_heads_grown_with_new_ids():
    m = model('gpt2'); grow_physically(m, None, 0, 1)
    with pytest.raises(ValueError, match='new ids'): HeadGates(m)

DATA = tiny_data()
SMALL = dict(cycles=2, steps=6, warmup_max_steps=4, warmup_window=2, score_batches=2, eval_batches=2, ramp_steps=2,
             boost_steps=3, grace_steps=0, prune_level=0.4, grow_ratio=0.5, max_new_tokens=4, prompts=['a b'])
# no dropout: with it the two runs draw their masks over tensors of different shapes, so they train on different noise
RUN_CASES = {'gpt2': dict(n_layer=2, n_head=4, resid_pdrop=0., attn_pdrop=0., embd_pdrop=0.), 'llama_6q2kv': GQA6,
             'bloom': dict(attention_dropout=0., hidden_dropout=0.)}
_MODELS = {}

def run(case, physical, out=None, **kw):
    if case not in _MODELS: _MODELS[case] = tiny_model(case.split('_')[0], **RUN_CASES[case])
    m = copy.deepcopy(_MODELS[case])
    log = run_plasticity(m, DATA, out=out, progress=False, physical=physical, **{**SMALL, **kw})
    return log, m

@pytest.mark.parametrize('case', list(RUN_CASES))
def test_a_physical_run_takes_the_masked_runs_decisions(case):
    (masked, mm), (phys, pm) = run(case, False), run(case, True)
    for kind in ('prune', 'grow', 'learn', 'measure'):
        a, b = masked.filter(kind), phys.filter(kind)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert [list(h) for h in x.heads] == [list(h) for h in y.heads], (kind, x.cycle)
            if x.head_state: assert x.head_state['active'] == y.head_state['active'], (kind, x.cycle)
            for k, v in (x.metrics_after or {}).items():
                if k == 'perplexity': assert y.metrics_after[k] == pytest.approx(v, rel=1e-4), (kind, x.cycle)
    dense = sum(p.numel() for p in mm.parameters())
    for e in phys.filter('prune') + phys.filter('grow'):          # the log says where each original head lives
        lay = e.info['physical']
        live = [[h for h, on in enumerate(row) if on] for row in e.head_state['active']]
        assert [[h for h in row if h >= 0] for row in lay['heads']] == live, (e.kind, e.cycle)
        assert lay['parameters'] < dense
    assert 'physical' not in masked.filter('prune')[0].info
    last = phys.filter('grow')[-1].info['physical']
    assert is_physical(pm) and sum(p.numel() for p in pm.parameters()) == last['parameters']
    assert layout_of(pm).heads == last['heads']
    table = metrics_table(phys)                                   # the report's phase table shows the model shrinking
    assert table.parameters.iloc[0] == dense and table.parameters.iloc[2] < dense and 'parameters' not in metrics_table(masked)

def test_a_physical_run_stops_and_resumes_into_the_same_run(tmp_path):
    straight, final = run('llama_6q2kv', True, tmp_path/'straight', distill=True)   # the teacher stays dense
    # any checkpoint loads into a fresh (dense) model, which load_checkpoint rebuilds to the layout first
    back = load_checkpoint_model(tmp_path/'straight'/'cycle-2', tiny_model('llama', **GQA6))
    assert layout_of(back) == layout_of(final)
    assert (logits(back) - logits(final)).abs().max().item() <= 1e-5 * max(1., logits(final).abs().max().item())
    assert json.loads((tmp_path/'straight'/'cycle-1'/LAYOUT_FILE).read_text())['heads'] == straight.filter('grow', 1)[0].info['physical']['heads']
    learn2 = straight.filter('learn', 2)[0]; at = learn2.step - learn2.info['steps'] + 2
    ctl = RunControl()
    def on_step(rec):
        if rec['global_step'] == at: ctl.stop()
    stopped, _ = run('llama_6q2kv', True, tmp_path/'b', control=ctl, on_step=on_step, distill=True)
    assert stopped.filter('stop') and (tmp_path/'b'/'stopped'/LAYOUT_FILE).exists()
    resumed, m = run('llama_6q2kv', True, tmp_path/'b', resume=True, distill=True)   # a fresh (dense) model is rebuilt to the layout
    for kind in ('prune', 'grow', 'learn'):
        for x, y in zip(straight.filter(kind), resumed.filter(kind)):
            assert [list(h) for h in x.heads] == [list(h) for h in y.heads], kind
            want = x.metrics_after.get('perplexity')       # prune/grow events measure no perplexity: None on both sides
            # (pytest >= 9.2 refuses approx(None); compare None as None and numbers as numbers)
            assert (y.metrics_after.get('perplexity') is None) if want is None else \
                y.metrics_after.get('perplexity') == pytest.approx(want, rel=1e-6), kind
    # the pruned result is kept with its gates folded in, and reloads from its own files
    saved = save_pruned(m, tmp_path/'pruned')
    back = load_pruned(saved)
    assert (logits(back) - logits(m)).abs().max().item() <= 1e-5 * max(1., logits(m).abs().max().item())
