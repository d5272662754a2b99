"Soft pruning: masks hold through training, bad requests fail clearly, safeguards (min heads per layer, protection) hold."
import copy
import pytest, torch
from hypothesis import given, settings, strategies as st, HealthCheck
from sentinel_nb.models import tiny_model, head_weight_slices, TINY_VOCAB
from sentinel_nb.gates import HeadGates, HeadUpdateScaler, zero_head_by_hand
from sentinel_nb.prune import prune_heads, restore_heads, pruned_heads, prunable_count, STRATEGIES

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "On a small shared CPU, two intra-op threads fighting other processes make tiny backward passes ~40x slower."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

IDS = torch.randint(1, TINY_VOCAB, (4, 16), generator=torch.Generator().manual_seed(0))   # [batch, pos]

def train_pruned(family, heads, steps=20):
    torch.manual_seed(0)
    m = tiny_model(family); g = HeadGates(m).install()
    s = torch.ones(g.n_layers, g.n_heads)
    for l, h in heads: s[l, h] = 0
    prune_heads(g, s, count=len(heads))
    before = {lh: {k: p.of().clone() for k, p in head_weight_slices(m, *lh).parts.items()} for lh in heads}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1); scaler = HeadUpdateScaler(g, opt)
    m.train()
    for step in range(steps):
        g.set_step(step); m(IDS, labels=IDS).loss.backward(); opt.step(); opt.zero_grad()
    m.eval(); scaler.remove()
    return m, g, before

# llama: heads 0 and 1 of layer 0 share key/value head 0 (both pruned: k/v freeze); head 3 of layer 1 shares with a live head
@pytest.mark.parametrize('family,heads', [('gpt2', [(0, 1), (1, 2)]), ('llama', [(0, 0), (0, 1), (1, 3)])])
def test_mask_holds_through_training(family, heads):
    m, g, before = train_pruned(family, heads)
    assert sorted(pruned_heads(g)) == sorted(heads)
    for (l, h), parts in before.items():
        group_pruned = all((l, k) in heads for k in head_weight_slices(m, l, h).kv_group)
        for k, old in parts.items():
            if k[0] in 'kv' and not group_pruned: continue     # a shared kv head still read by a live head keeps training
            assert torch.equal(head_weight_slices(m, l, h).parts[k].of(), old), (family, l, h, k)
    with torch.no_grad(): gated = m(IDS).logits
    g.remove()
    ref = copy.deepcopy(m)
    for l, h in heads: zero_head_by_hand(ref, l, h)
    with torch.no_grad(): plain, by_hand = m(IDS).logits, ref(IDS).logits
    assert (gated - by_hand).abs().max() <= 1e-5
    assert (gated - plain).abs().max() > 1e-3
    g.install(); assert sorted(restore_heads(g)) == sorted(heads)
    with torch.no_grad(): assert (m(IDS).logits - plain).abs().max() <= 1e-6
    g.remove()

@pytest.fixture(scope='module')
def gates(): return HeadGates(tiny_model('gpt2'))      # 2 x 4; prune_heads needs no forward pass

S = torch.arange(8.).view(2, 4)

@pytest.mark.parametrize('kwargs,msg', [
    (dict(level=1.0), 'level must be in [0, 1)'), (dict(level=-0.5), 'level must be in [0, 1)'),
    (dict(), 'exactly one of'), (dict(level=0.2, count=1), 'exactly one of'),
    (dict(count=1, strategy='fisher'), "unknown strategy 'fisher'; known: gradient, gradient_batch, magnitude, random, combined, entropy, entropy_high"),
    (dict(count=8, min_heads_per_layer=0), 'every active head'),
    (dict(count=7), 'only 6 are prunable'),
    (dict(count=6, protected=[(0, 0), (0, 1)]), 'only 5 are prunable'),
    (dict(count=-1), 'non-negative integer'), (dict(count=1, protected=[(0, 9)]), 'outside 2x4'),
])
def test_bad_requests(gates, kwargs, msg):
    restore_heads(gates)
    with pytest.raises(ValueError) as e: prune_heads(gates, S, **kwargs)
    assert msg in str(e.value)
    assert bool(gates.state.active.all())

def test_bad_scores(gates):
    restore_heads(gates)
    with pytest.raises(ValueError, match=r'\[2, 4\], got \[4, 2\]'): prune_heads(gates, S.T, count=1)
    with pytest.raises(ValueError, match="needs scores\\['magnitude'\\]"): prune_heads(gates, {'gradient': S}, count=1, strategy='magnitude')
    with pytest.raises(ValueError, match='NaN'): prune_heads(gates, torch.full((2, 4), float('nan')), count=1)

def test_no_gates_installed():
    with pytest.raises(ValueError, match='no HeadGates installed'): prune_heads(tiny_model('gpt2'), S, count=1)

def test_restore_selected_and_all(gates):
    restore_heads(gates)
    r = prune_heads(gates, S, count=3)
    assert r.heads == [(0, 0), (0, 1), (0, 2)] and r.threshold == 2.0 and r.count == 3
    assert restore_heads(gates, [(0, 1), (1, 1)]) == [(0, 1)]         # (1, 1) was never pruned
    assert sorted(pruned_heads(gates)) == [(0, 0), (0, 2)]
    assert sorted(restore_heads(gates)) == [(0, 0), (0, 2)] and bool(gates.state.active.all())

KEYS = sorted({key for key, _ in STRATEGIES.values()})   # every score a strategy can rank by

@pytest.fixture(scope='module')
def wide(): return HeadGates(tiny_model('gpt2', n_layer=3, n_head=8))   # 3 x 8

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), strategy=st.sampled_from(sorted(STRATEGIES)), min_heads=st.integers(0, 4),
       level=st.floats(0, 0.999), use_count=st.booleans(), cap=st.one_of(st.none(), st.integers(0, 10)))
def test_safeguards_property(wide, data, strategy, min_heads, level, use_count, cap):
    g = wide; L, H = g.n_layers, g.n_heads
    restore_heads(g); g.state.protected[:] = False
    bits = lambda: torch.tensor(data.draw(st.lists(st.booleans(), min_size=L * H, max_size=L * H))).view(L, H)
    g.state.active[:] = ~bits() | (torch.rand(L, H, generator=torch.Generator().manual_seed(1)) < 0.7)  # some pre-pruned
    g.state.protected[:] = bits() & (torch.arange(H) < 2)                                             # consent flags
    extra = data.draw(st.lists(st.tuples(st.integers(0, L - 1), st.integers(0, H - 1)), max_size=4))
    scores = torch.tensor(data.draw(st.lists(st.floats(-10, 10), min_size=L * H, max_size=L * H))).view(L, H)
    before = g.state.active.clone(); n_active = int(before.sum())
    count = data.draw(st.integers(0, L * H)) if use_count else None
    protected = g.state.protected.clone()
    for l, h in extra: protected[l, h] = True
    cand = before & ~protected
    prunable = int(torch.minimum(cand.sum(1), (before.sum(1) - min_heads).clamp(min=0)).sum())
    assert prunable_count(g, min_heads, extra) == prunable
    n = count if use_count else int(level * n_active + 0.5)
    kw = dict(count=count) if use_count else dict(level=level)
    if n > 0 and (n >= n_active or n > prunable):
        with pytest.raises(ValueError, match='prunable'): prune_heads(g, {k: scores for k in KEYS}, strategy=strategy, min_heads_per_layer=min_heads, max_per_cycle=cap, protected=extra, **kw)
        assert torch.equal(g.state.active, before)
        return
    r = prune_heads(g, {k: scores for k in KEYS}, strategy=strategy,
                    min_heads_per_layer=min_heads, max_per_cycle=cap, protected=extra, **kw)
    after = g.state.active
    assert r.count == len(r.heads) == min(n, cap if cap is not None else n) == int((before & ~after).sum())
    assert not (~before & after).any()                          # nothing was reactivated
    assert not (protected & before & ~after).any()              # protected heads never pruned
    pruned_layers = {l for l, _ in r.heads}
    for l in pruned_layers: assert int(after[l].sum()) >= min_heads
    # the pruned heads are the weakest in their direction among the candidates that could still go
    if r.heads and strategy != 'entropy_high':
        assert r.threshold == max(float(scores[l, h]) for l, h in r.heads)

def test_skipped_heads_say_which_safeguard_kept_them():
    "The decision record: every active head the scores alone would have pruned, and the safeguard that kept it."
    with HeadGates(tiny_model('gpt2', n_layer=2, n_head=4)) as g:
        scores = torch.tensor([[0.1, 0.2, 0.3, 0.9], [0.05, 0.8, 0.85, 0.95]])    # layer 0 weakest, then head (1, 0)
        pr = prune_heads(g, scores, count=4, strategy='gradient', min_heads_per_layer=2, max_per_cycle=2, protected=[(0, 0)])
        # ranked: (1,0) 0.05, (0,1) 0.2, (0,2) 0.3 -> layer 0 then has 2 left: (0,3) kept by the minimum; cap 2 of 4
        assert pr.heads == [(1, 0), (0, 1)]
        assert pr.skipped == {'0,0': 'protected', '0,2': 'cycle cap', '1,1': 'cycle cap'}, pr.skipped
        restore_heads(g)
        scores = torch.tensor([[0.1, 0.2, 0.3, 0.9], [0.5, 0.8, 0.85, 0.95]])
        pr = prune_heads(g, scores, count=2, strategy='gradient', min_heads_per_layer=3)
        # (0,0) goes; (0,1) and (0,2) rank next but layer 0 must keep 3 heads; (1,0) goes
        assert pr.heads == [(0, 0), (1, 0)]
        assert pr.skipped == {'0,1': 'layer at minimum', '0,2': 'layer at minimum'}, pr.skipped
