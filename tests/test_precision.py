"Mixed precision (fp32 master weights, fp16/bf16 autocast, fp16 gradient scaler) trains, keeps pruned heads exact, and stays near fp32."
import types
import pytest, torch
from sentinel_nb.core import autocast, mixed_precision_for
from sentinel_nb.models import tiny_model, head_weight_slices, out_projs, head_counts, TINY_VOCAB
from sentinel_nb.gates import HeadGates
from sentinel_nb.grow import grow_heads
from sentinel_nb.train import FineTuner, _check_precision

GEN = torch.Generator().manual_seed(0)
TOY = [{'input_ids': torch.randint(1, TINY_VOCAB, (8, 16), generator=GEN)} for _ in range(3)]   # [batch, pos]
NODROP = {'gpt2': dict(resid_pdrop=0., embd_pdrop=0., attn_pdrop=0.), 'llama': {}}
PRUNED = [(0, 0), (0, 1), (1, 2)]          # llama: (0, 0) and (0, 1) are one whole kv group, (1, 2) shares its k/v
STEPS = 12
# measured max |loss - fp32 loss| over 12 steps at lr 1e-3 (gpt2 / llama): fp16 2.0e-4 / 4.8e-4, bf16 1.3e-3 / 2.7e-3
LOSS_TOL = {'fp16': 5e-3, 'bf16': 2e-2}

def frozen_slices(m, g):
    "Every weight slice that must not move: q/o of pruned heads, k/v of wholly pruned kv groups."
    out = {}
    for l, h in PRUNED:
        hw = head_weight_slices(m, l, h)
        whole_group = not g.state.active[l, hw.kv_group].any()
        out.update({(l, h, n): s for n, s in hw.parts.items() if n[0] in 'qo' or whole_group})
    return out

def run(family, mp, steps=STEPS, lr=1e-3):
    m = tiny_model(family, **NODROP[family]); ref = tiny_model(family, **NODROP[family])
    with HeadGates(m) as g:
        for lh in PRUNED: g.state.active[lh] = False
        frozen = frozen_slices(m, g)
        before = {k: s.of().clone() for k, s in frozen.items()}
        res = FineTuner(m, lr=lr, warmup_steps=0, schedule='constant', mixed_precision=mp).train(TOY, steps)
        seen = {}                                              # out-projection inputs under autocast
        hooks = [o.register_forward_pre_hook(lambda mod, a, l=l: seen.__setitem__(l, a[0].detach().clone()))
                 for l, o in enumerate(out_projs(m))]           # registered after the gates: they see the gated input
        with torch.no_grad(), autocast('cpu', mp): m(TOY[0]['input_ids'])
        for h in hooks: h.remove()
    return m, ref, res, frozen, before, seen

@pytest.fixture(scope='module')
def fp32_losses():
    return {f: [r['loss'] for r in run(f, 'no')[2]['history']] for f in NODROP}

@pytest.mark.parametrize('mp', ['fp16', 'bf16'])
@pytest.mark.parametrize('family', ['gpt2', 'llama'])
def test_mixed_precision_trains_exactly_masked(family, mp, fp32_losses):
    m, ref, res, frozen, before, seen = run(family, mp)
    hist = res['history']
    assert res['stopped'] == 'steps' and not any(r['skipped'] or r['scaler_skipped'] for r in hist)
    assert all(torch.isfinite(p).all() for p in m.parameters())                      # fp16 AdamW on fp16 weights: all NaN
    assert all(p.dtype == torch.float32 for p in m.parameters())                     # fp32 masters
    assert all(torch.equal(s.of(), before[k]) for k, s in frozen.items())             # pruned slices bit-identical
    d = head_counts(m)[3]
    for l, h in PRUNED:
        z = seen[l].view(*seen[l].shape[:-1], -1, d)[..., h, :]                       # [batch, pos, d_head]
        assert z.dtype == (torch.float16 if mp == 'fp16' else torch.bfloat16) and torch.count_nonzero(z) == 0
    # live weights move: every element outside the frozen slices changed (bf16 weights + plain AdamW: 84% unchanged)
    frozen_mask = {}
    for s in frozen.values(): frozen_mask[id(s.param)] = frozen_mask.get(id(s.param), 0) | s.mask()
    moved = total = 0
    for p, p0 in zip(m.parameters(), ref.parameters()):
        live = ~frozen_mask.get(id(p), torch.zeros_like(p, dtype=torch.bool)) & (p0 != 0)
        moved += int((p != p0)[live].sum()); total += int(live.sum())
    assert moved / total > 0.999, moved / total
    diff = max(abs(a - b['loss']) for a, b in zip(fp32_losses[family], hist))
    assert diff < LOSS_TOL[mp], diff
    assert hist[-1]['loss'] < hist[0]['loss'] - 0.5                                   # it learns

def test_half_weights_are_refused_before_any_work():
    for dt in (torch.float16, torch.bfloat16):
        m = tiny_model('gpt2').to(dt)
        with pytest.raises(ValueError, match="float32.*mixed_precision='fp16'"): FineTuner(m)
    m = tiny_model('gpt2')
    with pytest.raises(ValueError, match='mixed_precision must be one of'): FineTuner(m, mixed_precision='fp8')
    with pytest.raises(ValueError, match='does its own mixed precision'):
        _check_precision(m, 'no', types.SimpleNamespace(device=torch.device('cpu'), mixed_precision='fp16'))
    frozen_half = tiny_model('gpt2').half().requires_grad_(False)                     # a frozen half model is fine
    for p in frozen_half.lm_head.parameters(): p.data = p.data.float(); p.requires_grad_(True)
    _check_precision(frozen_half, 'fp16', None)

def test_core_choices():
    assert mixed_precision_for('cpu') == 'no' and mixed_precision_for('cpu', torch.bfloat16) == 'bf16'
    with pytest.raises(ValueError, match='no mixed precision for'): mixed_precision_for('cpu', torch.float64)
    with pytest.raises(ValueError, match='mixed_precision must be'): autocast('cpu', 'half')

def test_scaler_calibration_is_not_instability():
    "A huge initial loss scale overflows fp16 for many steps: the scaler skips them, the trainer neither counts nor stops."
    m = tiny_model('gpt2', **NODROP['gpt2']); w0 = [p.clone() for p in m.parameters()]; unchanged = []
    ft = FineTuner(m, lr=1e-3, warmup_steps=0, mixed_precision='fp16', stability_level=1, schedule='constant')
    ft.grad_scaler.load_state_dict({**ft.grad_scaler.state_dict(), 'scale': 2. ** 40})
    res = ft.train(TOY, 40, on_step=lambda r: unchanged.append(all(torch.equal(a, b) for a, b in zip(m.parameters(), w0))))
    hist = res['history']; over = [r['scaler_skipped'] for r in hist]; n_over = over.index(False)
    assert res['stopped'] == 'steps' and not any(r['skipped'] for r in hist)
    assert n_over > 10 and unchanged[:n_over] == [True] * n_over and not unchanged[n_over]   # more than the 10-skips stop
    assert [r['loss_scale'] for r in hist[:n_over]] == [2. ** (40 - i) for i in range(n_over)]   # halved at each overflow
    assert hist[-1]['loss'] < min(r['loss'] for r in hist[:n_over]) - 0.3                        # then it learns
    # scaler state is part of the trainer's state and comes back on resume
    sd = ft.state_dict()
    ft2 = FineTuner(tiny_model('gpt2'), mixed_precision='fp16').load_state_dict(sd)
    assert ft2.grad_scaler.get_scale() == ft.grad_scaler.get_scale() == sd['grad_scaler']['scale']

def test_level1_still_skips_a_nan_loss_under_fp16():
    m = tiny_model('gpt2'); n = {'calls': 0}
    def poison(mod, args, out):
        n['calls'] += 1
        return out * float('nan') if n['calls'] == 2 else out
    m.lm_head.register_forward_hook(poison)
    res = FineTuner(m, lr=1e-3, warmup_steps=0, mixed_precision='fp16').train(TOY, 3)
    assert [r['skipped'] for r in res['history']] == [False, True, False]
    assert all(torch.isfinite(p).all() for p in m.parameters())

@pytest.mark.parametrize('mp', ['no', 'fp16'])
def test_grown_head_boost_under_the_grad_scaler(mp):
    "The 4x LR boost of a grown head and the freezing of a pruned one hold with the fp16 scaler in the loop."
    def q_updates(lr_boost):
        m = tiny_model('gpt2', **NODROP['gpt2'])
        with HeadGates(m) as g:
            g.state.active[1, 2] = g.state.active[1, 3] = False
            grow_heads(g, count=1, strategy='balanced', ramp_steps=0, lr_boost=lr_boost)
            grown = tuple((g.state.grown_at >= 0).nonzero()[0].tolist()); pruned = tuple((~g.state.active).nonzero()[0].tolist())
            keys = [grown, (grown[0], 0), pruned]
            before = [head_weight_slices(m, *k).q.clone() for k in keys]
            FineTuner(m, lr=1e-3, weight_decay=0.01, stability_level=1, warmup_steps=0, schedule='constant',
                      mixed_precision=mp).train(TOY[:1], 1)
            return [head_weight_slices(m, *k).q - b for k, b in zip(keys, before)]
    (g4, old4, pr4), (g1, old1, _) = q_updates(4.), q_updates(1.)
    torch.testing.assert_close(g4, 4 * g1, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(old4, old1, atol=0, rtol=0)
    assert pr4.abs().max().item() == 0.
