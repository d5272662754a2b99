"Physical pruning and growth: same logits as the masked model on every family, generate() with the KV cache, save/load, ONNX."
import copy, json
import pytest, torch
from hypothesis import given, settings, strategies as st, HealthCheck
from sentinel_nb.models import tiny_model, head_counts, attention_modules, TINY_VOCAB
from sentinel_nb.gates import HeadGates
from sentinel_nb.physical import (PAD, LAYOUT_FILE, LayoutError, HeadLayout, layout_of, is_physical, prune_physically,
                                  grow_physically, save_pruned, load_pruned, export_onnx, onnx_max_diff, onnx_fp32_error)

FAMILIES = ['gpt2', 'opt', 'gpt_neox', 'bloom', 'llama', 'mistral', 'qwen2']
GQA6 = dict(num_attention_heads=6, num_key_value_heads=2, num_hidden_layers=3, hidden_size=48)   # SmolLM2's grouping (3 per kv head)
# case -> (family, config overrides, kv_cache mode for grouped families)
CASES = {f: (f, {}, 'repeat') for f in FAMILIES} | {
    'llama_6q2kv': ('llama', GQA6, 'repeat'), 'qwen2_6q2kv': ('qwen2', GQA6, 'repeat'), 'qwen3_6q2kv': ('qwen3', GQA6, 'repeat'),
    'llama_compact': ('llama', {}, 'compact'), 'llama_6q2kv_compact': ('llama', GQA6, 'compact'),
    'qwen3_6q2kv_compact': ('qwen3', GQA6, 'compact')}
_BUILT = {}

def model(case: str):
    "A fresh copy of the case's tiny model (built once)."
    if case not in _BUILT: fam, kw, _ = CASES[case]; _BUILT[case] = tiny_model(fam, **kw)
    return copy.deepcopy(_BUILT[case])

def prune(m, case, what):
    "prune_physically in the case's kv_cache mode."
    return prune_physically(m, what, kv_cache=CASES[case][2] if layout_of(m).q_kv is not None else None)

GEN = torch.Generator().manual_seed(0)
IDS = torch.randint(1, TINY_VOCAB, (2, 12), generator=GEN)          # [batch, pos]

def logits(m, x=IDS):
    with torch.no_grad(): return m(x).logits                          # [batch, pos, vocab]

def n_params(m): return sum(p.numel() for p in m.parameters())

def masked_and_pruned(case, active, gate_values=None, dtype=torch.float32):
    "Logits of the masked model with `active` [layers, heads] (and gate values), the pruned model, and the layout."
    m = model(case).to(dtype)
    with HeadGates(m) as g:
        g.state.active.copy_(active)
        if gate_values is not None: g.gates.copy_(gate_values)
        masked = logits(m)
        layout = prune(m, case, g)
    return masked, logits(m), layout, m

def tol(case, masked) -> float:
    """fp32 bound on |pruned - masked|: 1e-5 on the stock tiny models. The wider 6q/2kv ones have larger logits (up to ~6)
    and fp32 GEMMs of different widths round differently (both are exact in fp64, see below): there 1e-5 x max|logit|."""
    return 1e-5 if case in FAMILIES else 1e-5 * max(1., masked.abs().max().item())

# ---- same function as the masked model -------------------------------------------------------------------------
@pytest.mark.parametrize('case', list(CASES))
def test_physical_equals_masked_property(case):
    L, H = head_counts(model(case))[:2]
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.lists(st.booleans(), min_size=L * H, max_size=L * H),
           st.lists(st.floats(0.25, 1.5), min_size=L * H, max_size=L * H))
    def check(keep, gate):
        active = torch.tensor(keep).view(L, H)                      # any number per layer, whole layers too
        masked, pruned, layout, _ = masked_and_pruned(case, active, torch.tensor(gate).view(L, H))
        assert (pruned - masked).abs().max().item() <= tol(case, masked)
        masked64, pruned64, _, _ = masked_and_pruned(case, active, torch.tensor(gate).view(L, H), torch.float64)
        assert (pruned64 - masked64).abs().max().item() <= 1e-10       # the same function: only fp32 rounding differs
        assert torch.equal(layout.original_mask(), active)
        for l in range(L):                                          # an emptied layer keeps only the placeholder
            assert layout.heads[l] == ([h for h in range(H) if keep[l * H + h]] or [PAD])
    check()

@pytest.mark.parametrize('case', list(CASES))
def test_generate_with_cache_equals_masked(case):
    m = model(case); prompt = IDS[:1, :5]
    L, H = head_counts(m)[:2]
    with HeadGates(m) as g:
        for l in range(L): g.state.active[l, torch.randperm(H, generator=GEN)[:l + 1]] = False   # 1, 2, 3 heads per layer
        want = m.generate(prompt, max_new_tokens=10, do_sample=False)
        prune(m, case, g)
    assert torch.equal(m.generate(prompt, max_new_tokens=10, do_sample=False), want)
    assert torch.equal(m.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False), want)

@pytest.mark.parametrize('case', ['gpt2', 'llama', 'llama_6q2kv', 'llama_6q2kv_compact'])
def test_sdpa_path(case):
    L, H = head_counts(model(case))[:2]
    active = torch.ones(L, H, dtype=torch.bool); active[0, :2] = False; active[-1, -1] = False
    masked, _, _, m = masked_and_pruned(case, active)
    m.set_attn_implementation('sdpa')
    assert (logits(m) - masked).abs().max().item() <= tol(case, masked)

def test_prune_twice_equals_one_masked_prune():
    "Pruning a pruned model again (ids are original slots) gives the masked model of the union."
    for case in ('gpt2', 'llama_6q2kv', 'llama_6q2kv_compact', 'bloom'):
        L, H = head_counts(model(case))[:2]
        first, second = [(0, 1), (1, 4 % H)], [(0, 0), (0, 2), (L - 1, H - 1)]
        active = torch.ones(L, H, dtype=torch.bool)
        for l, h in first + second: active[l, h] = False
        masked = masked_and_pruned(case, active)[0]
        m = model(case); prune(m, case, first); layout = prune(m, case, second)
        assert (logits(m) - masked).abs().max().item() <= tol(case, masked)
        assert torch.equal(layout.original_mask(), active) and is_physical(m)

# ---- the grouped key/value rule ---------------------------------------------------------------------------------
def test_gqa_group_fully_removed_drops_its_kv_head():
    m = model('llama_6q2kv'); n0 = n_params(m); d, hidden = 8, 48
    active = torch.ones(3, 6, dtype=torch.bool); active[0, :3] = False               # all readers of kv head 0
    masked, pruned, layout, m = masked_and_pruned('llama_6q2kv', active)
    assert (pruned - masked).abs().max().item() <= tol('llama_6q2kv', masked)
    a = attention_modules(m)[0]
    assert layout.kv_heads[0] == [1] and a.k_proj.weight.shape == (d, hidden) and a.num_key_value_groups == 3
    assert a.k_proj._sentinel_kv_rows is None                                       # still evenly grouped: no repeat
    assert n0 - n_params(m) == 3 * 2 * d * hidden + 2 * d * hidden                  # 3 x (q rows + o cols) + (k + v rows)

def test_gqa_group_partly_removed_keeps_its_kv_head():
    m = model('llama_6q2kv'); n0 = n_params(m); d, hidden = 8, 48
    active = torch.ones(3, 6, dtype=torch.bool); active[1, [0, 1]] = False; active[2, 0] = False
    masked, pruned, layout, m = masked_and_pruned('llama_6q2kv', active)
    assert (pruned - masked).abs().max().item() <= tol('llama_6q2kv', masked)
    assert layout.kv_heads[1] == [0, 1] and layout.q_kv[1] == [0, 1, 1, 1]           # head 2 still reads kv head 0
    assert layout.kv_expansion(2) == ([0, 0, 1, 1, 1], 1)                            # 2 and 3 readers: gcd 1
    rows, g = layout.kv_expansion(1)
    assert attention_modules(m)[1].num_key_value_groups == g == 1 and rows == [0, 1, 1, 1]
    assert n0 - n_params(m) == 3 * 2 * d * hidden                                   # only query heads: no k/v copies

def test_gqa_compact_keeps_the_cache_small():
    "'compact': the same parameters as 'repeat', the KV cache holds only the stored rows, padding query slots instead."
    active = torch.ones(3, 6, dtype=torch.bool); active[1, [0, 1]] = False; active[2, 0] = False
    _, _, rep_layout, m_rep = masked_and_pruned('llama_6q2kv', active)
    masked, pruned, layout, m = masked_and_pruned('llama_6q2kv_compact', active)
    assert (pruned - masked).abs().max().item() <= tol('llama_6q2kv_compact', masked)
    assert n_params(m) == n_params(m_rep) and layout.kv_heads == rep_layout.kv_heads
    assert layout.kv_expansion(1) == ([0, 1], 3) and layout.query_slots(1) == [0, PAD, PAD, 1, 2, 3]
    assert [len(layout.kv_expansion(l)[0]) for l in range(3)] == [2, 2, 2]          # 'repeat' caches [2, 4, 5] rows
    assert [len(rep_layout.kv_expansion(l)[0]) for l in range(3)] == [2, 4, 5]
    cache = m.generate(IDS[:1, :4], max_new_tokens=2, do_sample=False, return_dict_in_generate=True).past_key_values
    assert [cache.layers[l].keys.shape[1] for l in range(3)] == [2, 2, 2]            # [batch, kv rows, pos, d_head]
    with pytest.raises(ValueError, match='kv_cache must be'): prune_physically(model('llama'), [(0, 0)], kv_cache='small')

# ---- growth ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('case', list(CASES))
def test_grow_is_function_preserving_and_trains(case):
    m = model(case); L, H = head_counts(m)[:2]
    prune(m, case, [(0, 1), (L - 1, 0), (L - 1, H - 1)]); before = logits(m)
    layout = grow_physically(m, layout_of(m), L - 1, 3)
    layout = grow_physically(m, layout, 0, 1)
    assert (logits(m) - before).abs().max().item() <= 1e-5
    new = [(l, h) for l, h in layout.live_heads() if h >= H]
    assert new == [(0, H), (L - 1, H), (L - 1, H + 1), (L - 1, H + 2)]
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.train(); m.zero_grad(); m(IDS, labels=IDS).loss.backward()
    o_grad = _head_grad(m, layout, L - 1, H, 'o')
    assert o_grad > 0                                          # the new output columns learn at once
    opt.step(); m.zero_grad(); m(IDS, labels=IDS).loss.backward()
    assert _head_grad(m, layout, L - 1, H, 'q') > 0            # then q/k/v, once the output columns are non-zero
    m.eval(); assert (logits(m) - before).abs().max().item() > 1e-4

def _head_grad(m, layout, layer, head, part):
    "Sum |grad| of one physical head's q rows or output columns."
    from sentinel_nb.models import get_adapter
    a = get_adapter(m); attn = attention_modules(m)[layer]; d, p = layout.head_dim, layout.position(layer, head)
    if part == 'o':
        w = getattr(attn, a.out_proj_attr).weight.grad
        return (w[p * d:(p + 1) * d] if a.out_proj_kind == 'conv1d' else w[:, p * d:(p + 1) * d]).abs().sum().item()
    if a.qkv_layout == 'separate': return getattr(attn, a.q_attr).weight.grad[p * d:(p + 1) * d].abs().sum().item()
    w = getattr(attn, a.fused_attr).weight.grad
    if a.qkv_layout == 'conv1d_fused': return w[:, p * d:(p + 1) * d].abs().sum().item()
    return w[p * 3 * d:p * 3 * d + d].abs().sum().item()

def test_grid_round_trip_keeps_identities():
    m = model('llama_6q2kv'); prune_physically(m, [(0, 0), (1, 2), (1, 3), (2, 5)]); layout = grow_physically(m, None, 1, 2)
    per_pos = [torch.arange(layout.n_positions(l), dtype=torch.float32) + 10 * l for l in range(3)]
    grid = layout.to_grid(per_pos)                                    # [layers, 8]: 6 original + 2 grown in layer 1
    assert grid.shape == (3, 8) and torch.equal(~grid[:, :6].isnan(), layout.original_mask())
    assert grid[1, 6].item() == 14 and grid[1, 7].item() == 15         # grown heads after the 4 survivors of layer 1
    assert all(torch.equal(a, b) for a, b in zip(layout.from_grid(grid), per_pos))
    with pytest.raises(ValueError, match='positions'): layout.to_grid([torch.zeros(2)] * 3)

def test_grow_into_an_emptied_layer():
    for case in ('opt', 'llama_6q2kv', 'llama_6q2kv_compact'):
        m = model(case); H = head_counts(m)[1]
        prune(m, case, [(0, h) for h in range(H)]); before = logits(m)
        layout = grow_physically(m, None, 0, 2)
        assert layout.heads[0] == [H, H + 1] and (logits(m) - before).abs().max().item() <= 1e-6

# ---- keep it ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('case', list(CASES))
def test_save_load_round_trip(case, tmp_path):
    m = model(case); L, H = head_counts(m)[:2]
    prune(m, case, [(0, 0), (0, 2), (L - 1, 1)] + [(1, h) for h in range(H - 1)])   # 2, 1, ... heads left
    grow_physically(m, None, 0, 2)
    want = logits(m)
    save_pruned(m, tmp_path)
    back = load_pruned(tmp_path)
    assert (logits(back) - want).abs().max().item() <= 1e-5
    assert layout_of(back) == layout_of(m)
    assert torch.equal(back.generate(IDS[:1, :4], max_new_tokens=6, do_sample=False),
                       m.generate(IDS[:1, :4], max_new_tokens=6, do_sample=False))
    assert not list(tmp_path.glob('*.bin')) and not list(tmp_path.glob('*.pt'))              # no pickles

def test_corrupted_layouts_are_refused(tmp_path):
    m = model('llama_6q2kv'); prune_physically(m, [(0, 0), (1, 3), (1, 4)]); save_pruned(m, tmp_path)
    good = json.loads((tmp_path / LAYOUT_FILE).read_text())
    def load_with(d):
        (tmp_path / LAYOUT_FILE).write_text(d if isinstance(d, str) else json.dumps(d)); return load_pruned(tmp_path)
    more = copy.deepcopy(good); more['heads'][1], more['q_kv'][1] = [0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 1, 1]
    with pytest.raises(LayoutError, match=r'does not match the weights.*model.layers.1.self_attn.q_proj.weight is \[32, 48\], the layout implies \[48, 48\].*save_pruned'):
        load_with(more)
    bad = copy.deepcopy(good); bad['heads'][0] = [1, 1, 3, 4, 5]
    with pytest.raises(LayoutError, match='lists a head twice'): load_with(bad)
    other = copy.deepcopy(good); other['n_heads'] = 4; other['n_kv_heads'] = 2
    with pytest.raises(LayoutError): load_with(other)
    with pytest.raises(LayoutError, match='not valid JSON'): load_with('{"heads": [')
    with pytest.raises(LayoutError, match='not a head layout'): load_with({'heads': []})
    (tmp_path / LAYOUT_FILE).unlink()
    with pytest.raises(FileNotFoundError, match='save_pruned'): load_pruned(tmp_path)

def test_head_state_and_mask_inputs():
    "A HeadState or a bool active mask prunes like the HeadGates they come from (ramps of grown heads folded in)."
    active = torch.ones(2, 4, dtype=torch.bool); active[0, 3] = active[1, 1] = False
    from_state = model('opt')
    with HeadGates(from_state) as g:
        g.state.active.copy_(active); g.state.grown_at[0, 0] = 0; g.state.ramp_steps[0, 0] = 10; g.set_step(4)   # ramp 0.4
        masked = logits(from_state)
        with pytest.raises(ValueError, match='still carries HeadGates hooks'): prune_physically(from_state, g.state)   # gates twice
        with pytest.raises(ValueError, match='copied from another model'): prune_physically(copy.deepcopy(from_state), g.state)
    prune_physically(from_state, g.state)                       # the hooks are off: the state alone says what to keep
    assert (logits(from_state) - masked).abs().max().item() <= 1e-5
    from_mask = model('opt'); prune_physically(from_mask, active)
    assert layout_of(from_mask) == layout_of(from_state)

def test_bad_prune_requests():
    m = model('gpt2')
    with pytest.raises(ValueError, match=r'\[2, 4\]'): prune_physically(m, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match='prune must be'): prune_physically(m, 0.3)
    with pytest.raises(ValueError, match='another model'): prune_physically(m, HeadGates(model('gpt2')))
    prune_physically(m, [(0, 1)])
    with pytest.raises(ValueError, match='already removed'): prune_physically(m, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match='not in the model'): prune_physically(m, [(0, 1)])
    with pytest.raises(ValueError, match='outside'): grow_physically(m, None, 5, 1)

# ---- ONNX ---------------------------------------------------------------------------------------------------------------
HELD_OUT = [torch.randint(1, TINY_VOCAB, (b, s), generator=torch.Generator().manual_seed(7 + b)) for b, s in [(1, 16), (3, 24), (2, 40)]]

@pytest.mark.parametrize('case, dynamo', [('gpt2', False), ('llama_6q2kv', False), ('llama_6q2kv', True),
                                          pytest.param('gpt2', True, marks=pytest.mark.slow)])
def test_onnx_round_trip(case, dynamo, tmp_path):
    pytest.importorskip('onnxruntime')
    if dynamo: pytest.importorskip('onnxscript')
    m = model(case); prune_physically(m, [(0, 1), (1, 0), (1, 3)]); grow_physically(m, None, 0, 1)
    path = export_onnx(m, tmp_path / 'm.onnx', dynamo=dynamo)
    assert onnx_max_diff(m, path, HELD_OUT) <= 1e-4

@pytest.mark.parametrize('case', ['opt', 'gpt_neox', 'bloom', 'qwen2', 'llama_6q2kv_compact'])
def test_onnx_other_families(case, tmp_path):
    pytest.importorskip('onnxruntime')
    m = model(case); prune(m, case, [(0, 1), (1, 0), (1, 3)])
    assert onnx_max_diff(m, export_onnx(m, tmp_path / 'm.onnx', dynamo=False), HELD_OUT) <= 1e-4

@pytest.mark.parametrize('case', ['gpt2', 'llama_6q2kv', 'opt', 'gpt_neox', 'bloom', 'qwen2', 'llama_6q2kv_compact'])
def test_onnx_is_as_close_to_float64_as_torch(case, tmp_path):
    "The honest criterion (see the notebook): onnxruntime fp32 no further from the float64 truth than 2x torch's own fp32."
    pytest.importorskip('onnxruntime')
    m = model(case); prune(m, case, [(0, 1), (1, 0), (1, 3)])
    e = onnx_fp32_error(m, export_onnx(m, tmp_path / 'm.onnx', dynamo=False), HELD_OUT)
    assert 0 < e.torch and e.within(2), e

def test_onnx_fp32_error_catches_a_wrong_graph(tmp_path):
    "It can fail: a graph exported before one more head was removed is far outside 2x the fp32 noise."
    pytest.importorskip('onnxruntime')
    m = model('llama_6q2kv'); path = export_onnx(m, tmp_path / 'm.onnx', dynamo=False)
    prune_physically(m, [(1, 2)])
    assert not onnx_fp32_error(m, path, HELD_OUT).within(2)
    with pytest.raises(ValueError, match='float32'): onnx_fp32_error(m.double(), path, HELD_OUT)

# ---- the real thing -------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('dynamo', [False, True])
def test_smollm2_onnx_is_as_close_to_float64_as_torch(dynamo, tmp_path):
    "Pruned SmolLM2 (81 of 270 heads, non-uniform) on held-out English (the built-in corpus' validation play)."
    from sentinel_nb.loading import load_model
    from sentinel_nb.data import load_corpus
    if dynamo: pytest.importorskip('onnxscript')
    m, tok = load_model('smollm2-135m', device='cpu'); L, H, _, _ = head_counts(m)
    per = [1] * 7 + [2] * 7 + [3] * 6 + [4] * 8 + [5] * 2
    g = torch.Generator().manual_seed(0)
    prune_physically(m, [(l, int(h)) for l in range(L) for h in torch.randperm(H, generator=g)[:per[l]]])
    text = load_corpus('shakespeare')['validation'][0]['text']
    blocks = [tok(text[:20000], return_tensors='pt').input_ids[0, 1000:1256].view(2, 128)]
    e = onnx_fp32_error(m, export_onnx(m, tmp_path / 'm.onnx', dynamo=dynamo), blocks)
    print(e, e.onnx / e.torch, e.onnx / e.scale)
    assert e.within(2) and e.onnx / e.scale < 2e-5, e

@pytest.mark.slow
@pytest.mark.parametrize('kv_cache', ['repeat', 'compact'])
def test_smollm2_30pct_non_uniform(kv_cache, tmp_path):
    "SmolLM2-135M (30 layers x 9 query / 3 kv heads): 30 % of the heads out physically, the masked model's function."
    from sentinel_nb.loading import load_model
    base, _ = load_model('smollm2-135m', device='cpu')
    L, H, KV, d = head_counts(base); hidden = base.config.hidden_size
    per = [1] * 7 + [2] * 7 + [3] * 6 + [4] * 8 + [5] * 2                          # 81 of 270 heads, rising with depth
    g = torch.Generator().manual_seed(0)
    active = torch.ones(L, H, dtype=torch.bool)
    for l in range(L): active[l, torch.randperm(H, generator=g)[:per[l]]] = False
    ids = torch.randint(0, base.config.vocab_size, (2, 64), generator=g)
    out = {}
    for dtype in (torch.float32, torch.float64):
        m = copy.deepcopy(base).to(dtype)
        with HeadGates(m) as gates:
            gates.state.active.copy_(active)
            with torch.no_grad(): out['masked', dtype] = m(ids).logits.double()
            layout = prune_physically(m, gates, kv_cache=kv_cache)
        with torch.no_grad(): out['pruned', dtype] = m(ids).logits.double()
    stored = sum(map(len, layout.kv_heads))
    assert n_params(base) - n_params(m) == (81 + L * KV - stored) * 2 * d * hidden   # q+o of 81 heads, k+v of unread kv heads
    if kv_cache == 'compact': assert sum(len(layout.kv_expansion(l)[0]) for l in range(L)) == stored
    f, D = torch.float32, torch.float64
    assert (out['pruned', D] - out['masked', D]).abs().max().item() <= 1e-9          # the same function
    fp32_noise = (out['masked', f] - out['masked', D]).abs().max().item()          # the masked model's own fp32 error
    assert (out['pruned', f] - out['masked', f]).abs().max().item() <= 2 * fp32_noise
    m = m.float(); save_pruned(m, tmp_path); back = load_pruned(tmp_path)
    with torch.no_grad(): assert (back(ids).logits - m(ids).logits).abs().max().item() <= 1e-5
