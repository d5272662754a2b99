"Growth at insertion is invisible, grown heads learn faster, the trainer's stability guards and accumulation work."
import copy
import pytest, torch
from sentinel_nb.models import tiny_model, head_weight_slices, TINY_VOCAB
from sentinel_nb.gates import HeadGates
from sentinel_nb.grow import grow_heads, pruned_heads
from sentinel_nb.train import FineTuner, lr_factor

FAMILIES = ['gpt2', 'opt', 'gpt_neox', 'llama', 'bloom']
GEN = torch.Generator().manual_seed(0)
TOY = [{'input_ids': torch.randint(1, TINY_VOCAB, (8, 16), generator=GEN)} for _ in range(3)]   # [batch, pos]
NODROP = dict(resid_pdrop=0., embd_pdrop=0., attn_pdrop=0.)

@pytest.mark.parametrize('init', ['fresh', 'clone'])
@pytest.mark.parametrize('family', FAMILIES)
def test_growth_leaves_logits_unchanged(family, init):
    m = tiny_model(family); ids = TOY[0]['input_ids'][:2, :10]
    with HeadGates(m) as g:
        for l, h in [(0, 0), (0, 1), (1, 2)]: g.state.active[l, h] = False   # (0,0),(0,1): a whole llama kv group
        with torch.no_grad(): base = m(ids).logits
        res = grow_heads(g, count=3, strategy='gradient', init=init, batches=[{'input_ids': ids}])
        with torch.no_grad(): after = m(ids).logits
        assert (after - base).abs().max().item() <= 1e-5
        assert sorted(res.heads) == [(0, 0), (0, 1), (1, 2)] and pruned_heads(g) == []
        assert all(g.state.grown_at[l, h] == 0 and g.state.ramp_steps[l, h] == 50 for l, h in res.heads)
        g.set_step(25)                                     # half-way up the ramp the heads do contribute
        with torch.no_grad(): assert (m(ids).logits - base).abs().max().item() > 1e-4

def test_grown_weights_are_new():
    m = tiny_model('gpt2')
    with HeadGates(m) as g:
        g.state.active[1, 2] = False; old = head_weight_slices(m, 1, 2).q.clone()
        grow_heads(g, count=1, strategy='random', init='fresh')
        assert not torch.equal(head_weight_slices(m, 1, 2).q, old)

def test_grow_bad_inputs():
    m = tiny_model('gpt2')
    with HeadGates(m) as g:
        with pytest.raises(ValueError, match='no pruned'): grow_heads(g, count=1)
        g.state.active[0, 0] = False
        for kw, msg in [(dict(count=2), 'only 1'), (dict(ratio=0.), r'\(0, 1\]'), (dict(ratio=1.5), r'\(0, 1\]'),
                        (dict(count=1, ratio=0.5), 'exactly one'), (dict(), 'exactly one'),
                        (dict(count=1, strategy='x'), 'unknown strategy'), (dict(count=1, init='x'), 'unknown init'),
                        (dict(count=1, strategy='gradient'), 'needs batches')]:
            with pytest.raises(ValueError, match=msg): grow_heads(g, **kw)

def _boosted_q_update(lr_boost):
    m = tiny_model('gpt2', **NODROP)
    with HeadGates(m) as g:
        g.state.active[1, 2] = g.state.active[1, 3] = False
        res = grow_heads(g, count=1, strategy='balanced', ramp_steps=0, lr_boost=lr_boost)
        (l, h), = res.heads; (pl, ph), = pruned_heads(g)
        before = [head_weight_slices(m, *lh).q.clone() for lh in [(l, h), (l, 0), (pl, ph)]]
        FineTuner(m, lr=1e-3, weight_decay=0.01, stability_level=0, schedule='constant').train(TOY[:1], 1)
        return [head_weight_slices(m, *lh).q - b for lh, b in zip([(l, h), (l, 0), (pl, ph)], before)]

def test_grown_head_gets_boosted_lr_and_pruned_head_is_frozen():
    (g4, old4, pr4), (g1, old1, _) = _boosted_q_update(4.), _boosted_q_update(1.)
    torch.testing.assert_close(g4, 4 * g1, atol=1e-7, rtol=1e-4)        # same gradient, 4x the update
    assert 3.5 < (g4.abs().mean() / old4.abs().mean()).item() < 4.5     # vs an old head of the same layer
    assert pr4.abs().max().item() == 0.                                 # pruned: frozen despite weight decay

def _poison_lm_head(m, at_call):
    n = {'calls': 0}
    def hook(mod, args, out):
        n['calls'] += 1
        return out * float('nan') if n['calls'] == at_call else out
    return m.lm_head.register_forward_hook(hook)

def test_level1_skips_nan_step_without_corrupting_weights():
    m = tiny_model('gpt2'); _poison_lm_head(m, at_call=2); snaps = {}
    res = FineTuner(m, lr=1e-3, stability_level=1, warmup_steps=0).train(
        TOY, 4, on_step=lambda r: snaps.__setitem__(r['step'], copy.deepcopy(m.state_dict())))
    assert [r['skipped'] for r in res['history']] == [False, True, False, False]
    assert all(torch.equal(snaps[1][k], snaps[2][k]) for k in snaps[1])
    assert not all(torch.equal(snaps[2][k], snaps[3][k]) for k in snaps[2])   # training resumes
    assert all(torch.isfinite(p).all() for p in m.parameters())

def test_level2_rolls_back_on_spike():
    m = tiny_model('gpt2'); good, hist = {}, []
    def on_step(rec):
        hist.append(rec)
        if rec['step'] == 4:
            good.update({k: v.clone() for k, v in m.state_dict().items()})
            with torch.no_grad():
                for p in m.parameters(): p.add_(torch.randn_like(p) * 2)   # a disastrous update
    ft = FineTuner(m, lr=1e-3, stability_level=2, warmup_steps=0, snapshot_every=2, schedule='constant')
    res = ft.train(TOY, 8, on_step=on_step, should_stop=lambda: any(r['rolled_back'] for r in hist))
    assert [r['rolled_back'] for r in res['history']] == [False] * 4 + [True]
    assert all(torch.equal(good[k], v) for k, v in m.state_dict().items())
    assert ft.lr_scale == 0.5 and res['stopped'] == 'should_stop'

def _grads(batches, accum):
    m = tiny_model('gpt2', **NODROP); grads = []
    ft = FineTuner(m, lr=1e-2, stability_level=0, grad_accum=accum, schedule='constant')
    ft.optimizer.optimizer.register_step_pre_hook(lambda o, a, k: grads.append([p.grad.clone() for p in m.parameters()]))
    ft.train(batches, 2)
    return grads, m

def test_grad_accumulation_equals_big_batch():
    halves = [{'input_ids': b['input_ids'][i:i + 4]} for b in TOY[:2] for i in (0, 4)]
    (g8, m8), (g4, m4) = _grads(TOY[:2], 1), _grads(halves, 2)
    assert len(g8) == len(g4) == 2
    for s8, s4 in zip(g8, g4):
        for a, b in zip(s8, s4): torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # weights too, except GPT-2's key biases whose true gradient is 0 (rounding noise, amplified by Adam)
    for (name, a), b in zip(m8.named_parameters(), m4.parameters()):
        if 'c_attn.bias' not in name: torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)

def test_mode_restored_and_schedule():
    m = tiny_model('gpt2'); m.eval()
    FineTuner(m, lr=1e-3).train(TOY, 1); assert not m.training
    m.train(); FineTuner(m, lr=1e-3).train(TOY, 1); assert m.training
    assert lr_factor(0, 10, 2) == 0.5 and lr_factor(10, 10, 2, 'linear') == 0.

def test_trainer_bad_inputs():
    m = tiny_model('gpt2')
    for kw in [dict(stability_level=3), dict(schedule='step'), dict(grad_accum=0), dict(lr=0), dict(distill_alpha=2),
               dict(patience=0)]:
        with pytest.raises(ValueError): FineTuner(m, **kw)
    with pytest.raises(ValueError, match='no batches'): FineTuner(m).train([], 1)

def test_clone_falls_back_to_fresh_when_layer_is_empty():
    m = tiny_model('llama'); ids = TOY[0]['input_ids'][:2, :10]
    with HeadGates(m) as g:
        g.state.active[1] = False; g.state.active[0, 3] = False          # layer 1 entirely pruned
        with torch.no_grad(): base = m(ids).logits
        res = grow_heads(g, ratio=0.5, strategy='gradient', init='clone', batches=[{'input_ids': ids}])
        with torch.no_grad(): assert (m(ids).logits - base).abs().max().item() <= 1e-5
        assert len(res.heads) == 3 and all(l == 0 for l, h in res.sources)   # only layer 0 has clone parents
