"Installing HeadGates twice replaces the old gates; stale Adam moments of pruned heads are cleared; GQA k/v update scales."
import copy, gc, weakref
import pytest, torch
from sentinel_nb.models import tiny_model, head_weight_slices, TINY_VOCAB
from sentinel_nb.gates import HeadGates, HeadState, HeadUpdateScaler
from sentinel_nb.grow import grow_heads
from sentinel_nb.train import FineTuner

GEN = torch.Generator().manual_seed(0)
TOY = [{'input_ids': torch.randint(1, TINY_VOCAB, (8, 16), generator=GEN)} for _ in range(3)]   # [batch, pos]
IDS = TOY[0]['input_ids'][:2, :10]
NODROP = dict(resid_pdrop=0., embd_pdrop=0., attn_pdrop=0.)

@torch.no_grad()
def logits(m): return m(IDS).logits

def no_hooks_left(model):
    return all(not (m._forward_pre_hooks or m._forward_hooks) for m in model.modules())

# --- installing twice ------------------------------------------------------------------------------------
def test_second_install_replaces_the_first():
    m = tiny_model('gpt2'); ref = copy.deepcopy(m); base = logits(m)
    a = HeadGates(m).install(); a.state.active[0, 1] = False
    assert (logits(m) - base).abs().max() > 1e-3
    with pytest.warns(UserWarning, match='1 pruned heads were dropped'): b = HeadGates(m).install()
    assert not a.installed and b.installed and HeadGates.of(m) is b
    assert torch.equal(logits(m), base)                        # a's pruned head is gone with a's hooks
    a.remove()                                                 # late clean-up of the old object: b untouched
    assert b.installed and HeadGates.of(m) is b
    b.state.active[1, 0] = False; assert (logits(m) - base).abs().max() > 1e-3; b.state.active[1, 0] = True
    b.remove()
    assert no_hooks_left(m) and torch.equal(logits(m), base)
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in m.state_dict().items())
    with pytest.raises(ValueError, match='no HeadGates installed'): HeadGates.of(m)

def test_nested_with_blocks_replace_too():
    m = tiny_model('llama'); base = logits(m)
    with HeadGates(m, record_stats=True) as a:
        a.state.active[0, 0] = False
        with pytest.warns(UserWarning, match='dropped'):
            with HeadGates(m) as b: assert torch.equal(logits(m), base) and not a.installed
        assert no_hooks_left(m)
    assert no_hooks_left(m) and torch.equal(logits(m), base)

def test_gates_without_a_reference_stay_findable_then_go():
    "Installed hooks hold their HeadGates (the registry holds only weak references): it cannot vanish while gating."
    m = tiny_model('gpt2'); base = logits(m)
    HeadGates(m).install().state.active[0, 1] = False          # a cell that keeps no reference
    gc.collect()
    a = HeadGates.of(m); assert a.installed and (logits(m) - base).abs().max() > 1e-3
    a_ref = weakref.ref(a); del a
    with pytest.warns(UserWarning): b = HeadGates(m).install()
    gc.collect()
    assert a_ref() is None                                     # its hooks removed, nothing keeps the old object
    assert torch.equal(logits(m), base)
    b.remove(); assert no_hooks_left(m)

def test_registry_does_not_keep_a_model_alive():
    m = tiny_model('gpt2'); g = HeadGates(m).install(); m_ref, g_ref = weakref.ref(m), weakref.ref(g)
    del m, g; gc.collect()
    assert m_ref() is None and g_ref() is None

def test_hooks_copied_with_a_model_are_dropped_on_install():
    m = tiny_model('gpt2'); base = logits(m)
    with HeadGates(m) as a:
        a.state.active[0, 1] = False
        c = copy.deepcopy(m)                                   # carries a's hook functions, not in the registry
    assert no_hooks_left(m) and (logits(c) - base).abs().max() > 1e-3
    with pytest.warns(UserWarning, match='dropped'): b = HeadGates(c).install()
    assert torch.equal(logits(c), base)
    b.remove(); assert no_hooks_left(c)

# --- stale optimizer moments ------------------------------------------------------------------------------
def _regrown_head_update(monkeypatch=None):
    m = tiny_model('gpt2', **NODROP)
    with HeadGates(m) as g:
        ft = FineTuner(m, lr=1e-2, weight_decay=0., stability_level=0, warmup_steps=0, schedule='constant')
        opt = ft.optimizer.optimizer
        ft.train(TOY, 3)                                       # head (1, 2) active: its Adam moments fill up
        g.state.active[1, 2] = False
        ft.train(TOY, 2)                                       # pruned and frozen: one persistent optimizer
        hw = head_weight_slices(m, 1, 2)
        moments = [s.of(opt.state[s.param][k]) for s in hw.parts.values() for k in ('exp_avg', 'exp_avg_sq')]
        grow_heads(g, count=1, strategy='random', init='fresh', ramp_steps=5)   # gate 0 at birth: zero gradient
        before = {n: s.of().clone() for n, s in hw.parts.items()}
        ft.train(TOY, 1); ft.close()
        return moments, {n: (s.of() - before[n]).abs().max().item() for n, s in hw.parts.items()}

def test_regrown_head_starts_from_clean_moments(monkeypatch):
    moments, moved = _regrown_head_update()
    assert all(torch.count_nonzero(t) == 0 for t in moments)
    assert max(moved.values()) == 0.                           # zero gradient, clean moments: it does not move
    monkeypatch.setattr(HeadUpdateScaler, '_clear_state', lambda self, s: None)   # the old behaviour
    _, moved_stale = _regrown_head_update()
    assert moved_stale['q'] > 1e-3                             # stale momentum moved it

# --- grouped key/value heads -------------------------------------------------------------------------------
def test_kv_update_scale_rules():
    s = HeadState.fresh(1, 8); s.lr_boost.fill_(4.); s.boost_steps.fill_(100)
    s.active[0, 0:2] = False                                   # group 0: all pruned -> 0
    s.grown_at[0, 2] = 0                                       # group 1: one grown + one original -> 1
    s.grown_at[0, 4:6] = 0; s.lr_boost[0, 5] = 2.              # group 2: all grown -> the smaller boost
    s.grown_at[0, 7] = 0; s.active[0, 6] = False               # group 3: the only active head grown -> its boost
    assert s.kv_update_scale(4).tolist() == [[0., 1., 2., 4.]]
    assert HeadState.fresh(2, 4).kv_update_scale(4).tolist() == [[1.] * 4] * 2

def _llama_updates(prune, grow_n, lr_boost):
    "One AdamW step on tiny llama (4 query heads, 2 kv heads): updates of layer 0's kv head 0 and of the grown q."
    m = tiny_model('llama')
    with HeadGates(m) as g:
        for lh in prune: g.state.active[lh] = False
        res = grow_heads(g, count=grow_n, strategy='balanced', ramp_steps=0, lr_boost=lr_boost)
        kv, q = head_weight_slices(m, 0, 0), head_weight_slices(m, *res.heads[0])
        before = [kv.k.clone(), kv.v.clone(), q.q.clone()]
        FineTuner(m, lr=1e-3, weight_decay=0., stability_level=0, warmup_steps=0, schedule='constant').train(TOY[:1], 1)
        return res.heads, [now - b for now, b in zip([kv.k, kv.v, q.q], before)]

@pytest.mark.parametrize('prune,grow_n,kv_boosted', [
    ([(0, 1)], 1, False),                 # grown next to an original head: shared k/v at the plain rate
    ([(0, 0), (0, 1)], 2, True),          # the whole group grown: boosted
    ([(0, 0), (0, 1)], 1, True)])         # one grown, its partner still pruned: every active reader grown, boosted
def test_shared_kv_boosted_only_when_every_active_reader_is_grown(prune, grow_n, kv_boosted):
    heads4, (dk4, dv4, dq4) = _llama_updates(prune, grow_n, 4.)
    heads1, (dk1, dv1, dq1) = _llama_updates(prune, grow_n, 1.)
    assert heads4 == heads1 and all(l == 0 for l, h in heads4)
    torch.testing.assert_close(dq4, 4 * dq1, atol=1e-7, rtol=1e-4)        # the grown query head: always 4x
    assert dk1.abs().max() > 0 and dv1.abs().max() > 0
    factor = 4. if kv_boosted else 1.
    torch.testing.assert_close(dk4, factor * dk1, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(dv4, factor * dv1, atol=1e-7, rtol=1e-4)
