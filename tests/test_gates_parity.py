"Parity of `HeadGates` with hand-edited weights, across the five tiny families and (if trained) sentinel-tiny."
import copy, inspect, math
import pytest, torch
from hypothesis import given, settings, strategies as st, HealthCheck
from sentinel_nb.core import data_dir
from sentinel_nb.models import tiny_model, head_counts, head_weight_slices, out_projs, TINY_VOCAB
from sentinel_nb.loading import load_model
from sentinel_nb.gates import HeadGates, zero_head_by_hand

FAMILIES = ['gpt2', 'opt', 'gpt_neox', 'llama', 'bloom']
IDS = torch.randint(1, TINY_VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))   # [batch, pos]
TOL = 1e-5

def maxdiff(a, b): return (a - b).abs().max().item()

@torch.no_grad()
def logits(model, ids=IDS, **kw): return model(ids, **kw).logits

def no_hooks_left(model):
    return all(not (m._forward_pre_hooks or m._forward_hooks or m._backward_hooks) for m in model.modules())

@pytest.fixture(params=FAMILIES)
def model(request): return tiny_model(request.param)

def test_all_ones_is_identity(model):
    base = logits(model)
    with HeadGates(model): assert maxdiff(logits(model), base) <= TOL

@pytest.mark.parametrize('layer,head', [(0, 0), (1, 3)])
def test_gate_zero_equals_hand_zeroed_out_proj(model, layer, head):
    ref = zero_head_by_hand(copy.deepcopy(model), layer, head)
    base = logits(model)
    with HeadGates(model) as g:
        g.gates[layer, head] = 0
        gated = logits(model)
    assert maxdiff(gated, logits(ref)) <= TOL
    assert maxdiff(gated, base) > 1e-3      # the head matters, so the comparison above means something

def test_zeroing_o_slice_equals_gate(model):
    ref = copy.deepcopy(model)
    with torch.no_grad(): head_weight_slices(ref, 1, 2).o.zero_()
    with HeadGates(model, gates=torch.tensor([[1., 1, 1, 1], [1, 1, 0, 1]])): assert maxdiff(logits(model), logits(ref)) <= TOL

def test_zeroing_v_slice_equals_gating_its_kv_group(model):
    "Zeroing a (shared) value head silences exactly the query heads that read it."
    ref = copy.deepcopy(model); s = head_weight_slices(ref, 0, 3)
    with torch.no_grad():
        s.v.zero_()
        if s.v_bias is not None: s.v_bias.zero_()
    gates = torch.ones(*head_counts(model)[:2]); gates[0, s.kv_group] = 0
    with HeadGates(model, gates=gates): assert maxdiff(logits(model), logits(ref)) <= TOL

def test_learnable_gates_get_gradients(model):
    with HeadGates(model, learnable=True) as g:
        model(IDS, labels=IDS).loss.backward()
    assert g.gates.grad is not None and (g.gates.grad != 0).all()

def test_removal_restores_model(model):
    base, state = logits(model), {k: v.clone() for k, v in model.state_dict().items()}
    g = HeadGates(model, learnable=True, record_stats=True).install()
    with torch.no_grad(): g.gates[0, 1] = 0
    model(IDS, attention_mask=torch.ones_like(IDS), labels=IDS).loss.backward()
    g.remove()
    model.zero_grad(set_to_none=True)
    assert no_hooks_left(model)
    assert all(len(o._forward_pre_hooks) == 0 for o in out_projs(model))
    assert logits(model).equal(base)
    new = model.state_dict(); assert new.keys() == state.keys() and all(new[k].equal(state[k]) for k in state)

def test_in_place_edit_takes_effect_immediately(model):
    with HeadGates(model) as g:
        before = logits(model)
        g.gates[1, 0] = 0.5
        assert maxdiff(logits(model), before) > 1e-4
        g.gates[1, 0] = 1.0
        assert maxdiff(logits(model), before) <= TOL

def test_generate_with_gated_head_matches_reference(model):
    ref = zero_head_by_hand(copy.deepcopy(model), 1, 1)
    prompt, kw = IDS[:1, :4], dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        expected = ref.generate(prompt, **kw)
        with HeadGates(model) as g:
            g.gates[1, 1] = 0
            got = model.generate(prompt, **kw)
    assert got.equal(expected)

def _padded(side):
    "Row 0: 10 real tokens; row 1: 6 real tokens padded with 4 on `side`."
    a, b, pad = IDS[0], IDS[1, :6], torch.zeros(4, dtype=torch.long)
    row1, m1 = ((torch.cat([b, pad]), [1]*6 + [0]*4) if side == 'right' else (torch.cat([pad, b]), [0]*4 + [1]*6))
    return torch.stack([a, row1]), torch.tensor([[1]*10, m1]), (a, b)

@pytest.mark.parametrize('side', ['right', 'left'])
def test_entropy_ignores_padding(model, side):
    ids, mask, (a, b) = _padded(side)
    kw = dict(attention_mask=mask)
    if 'position_ids' in inspect.signature(model.forward).parameters:   # left padding: real tokens keep positions 0..n-1
        kw['position_ids'] = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), HeadGates(model, record_stats=True) as g:
        model(ids, **kw); padded = g.stats()
        g.reset_stats(); model(a[None]); model(b[None]); unpadded = g.stats()
    assert padded['tokens'][0, 0].item() == 16
    for k in ('entropy', 'output_norm'):
        assert torch.isfinite(padded[k]).all()
        assert maxdiff(padded[k], unpadded[k]) <= TOL, k
    assert (padded['entropy'] >= 0).all() and (padded['entropy'] <= math.log(10) + 1e-6).all()

def test_entropy_bounds_and_recording_context(model):
    with torch.no_grad(), HeadGates(model) as g:
        with g.recording(): model(IDS)
        model(IDS)   # outside recording(): not counted
        s = g.stats()
    assert s['tokens'][0, 0].item() == IDS.numel()
    assert (s['entropy'] >= 0).all() and (s['entropy'] <= math.log(IDS.shape[1]) + 1e-6).all()
    assert (s['output_norm'] > 0).all()

_hyp_models = {f: tiny_model(f) for f in ('gpt2', 'llama', 'bloom')}

@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(sorted(_hyp_models)), layer=st.integers(0, 1),
       values=st.lists(st.floats(0, 1, allow_nan=False), min_size=4, max_size=4))
def test_random_gates_equal_scaled_out_proj_columns(family, layer, values):
    model = _hyp_models[family]
    ref = copy.deepcopy(model)
    for h, v in enumerate(values): zero_head_by_hand(ref, layer, h, scale=v)
    gates = torch.ones(*head_counts(model)[:2]); gates[layer] = torch.tensor(values)
    with HeadGates(model, gates=gates): assert maxdiff(logits(model), logits(ref)) <= TOL

def test_bad_gate_shape_and_unsupported_model():
    with pytest.raises(ValueError, match='gates must be'): HeadGates(tiny_model('gpt2'), gates=torch.ones(3, 4))
    with pytest.raises(ValueError, match='supported'): HeadGates(torch.nn.Linear(2, 2))

@pytest.mark.skipif(not (data_dir() / 'sentinel-tiny' / 'config.json').exists(), reason='sentinel-tiny not trained yet')
def test_sentinel_tiny_parity():
    model, tok = load_model('sentinel-tiny', device='cpu', dtype=torch.float32)
    ids = tok(["To be, or not to be, that is the question"], return_tensors='pt')['input_ids']
    base = logits(model, ids); n_layers, n_heads = head_counts(model)[:2]
    ref = zero_head_by_hand(copy.deepcopy(model), n_layers - 1, n_heads - 1)
    with HeadGates(model) as g:
        assert maxdiff(logits(model, ids), base) <= TOL
        g.gates[-1, -1] = 0
        assert maxdiff(logits(model, ids), logits(ref, ids)) <= TOL
    assert no_hooks_left(model) and maxdiff(logits(model, ids), base) == 0
