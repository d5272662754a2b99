"Michel et al.'s per-example gate gradient against a hand loop, and the induction probe and head scores on tiny and trained models."
import math
import pytest, torch
from sentinel_nb.models import tiny_model, head_counts, TINY_VOCAB
from sentinel_nb.loading import load_model
from sentinel_nb.gates import HeadGates
from sentinel_nb.importance import _gate_pass, head_importance
from sentinel_nb.metrics import batch_nll, evaluate, induction_batch, induction_head_scores, induction_score

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def make_batches(seed=0):
    "Two batches of 4 x 16 random tokens; row 2 of the second is right-padded after 9 tokens."
    ids = torch.randint(1, TINY_VOCAB, (2, 4, 16), generator=torch.Generator().manual_seed(seed))   # [batches, batch, pos]
    batches = [{'input_ids': x, 'attention_mask': torch.ones_like(x), 'labels': x.clone()} for x in ids]
    batches[1]['attention_mask'][2, 9:] = 0
    return batches

def hand_gradients(model, batches, gate_edits, pruned):
    "Per-example |dL_b/dξ| averaged over examples and per-batch |d(batch mean L)/dξ| averaged over batches, by plain autograd."
    with HeadGates(model, learnable=True) as g:
        with torch.no_grad():
            for (l, h), v in gate_edits.items(): g.gates[l, h] = v
        for l, h in pruned: g.state.active[l, h] = False
        per_example, per_batch, n = 0, 0, 0
        for b in batches:
            for r in range(len(b['input_ids'])):        # one example at a time: its own loss, its own gradient
                nll, keep, _ = batch_nll(model, {k: v[r:r + 1] for k, v in b.items()})
                (grad,) = torch.autograd.grad(nll.sum() / keep.sum(), [g.gates])
                per_example, n = per_example + grad.abs(), n + 1
            nll, keep, _ = batch_nll(model, b)
            (grad,) = torch.autograd.grad(nll.sum() / keep.sum(), [g.gates])
            per_batch = per_batch + grad.abs()
    return per_example / n, per_batch / len(batches)

@pytest.mark.parametrize('family', ['gpt2', 'llama'])
@pytest.mark.parametrize('gate_edits,pruned', [({}, []), ({(1, 2): 0.0, (0, 3): 0.5}, [(0, 1)])])
def test_per_example_gradient_matches_hand_loop(family, gate_edits, pruned):
    model, batches = tiny_model(family), make_batches()
    expected_example, expected_batch = hand_gradients(model, batches, gate_edits, pruned)
    with HeadGates(model) as g:
        for (l, h), v in gate_edits.items(): g.gates[l, h] = v
        for l, h in pruned: g.state.active[l, h] = False
        per_example, per_batch, ent = _gate_pass(g, batches, 2, entropy=True, gradient=True)
    assert (per_example - expected_example).abs().max() < 1e-5
    assert (per_batch - expected_batch).abs().max() < 1e-5
    assert ent.shape == (2, 4) and ent.min() > 0
    for l, h in pruned: assert per_example[l, h] == 0 and per_batch[l, h] == 0
    if (1, 2) in gate_edits: assert per_example[1, 2] > 0            # a gate at 0 still has a gradient (it is not pruned)
    # the two definitions really differ: |mean of gradients| <= mean of |gradients|, strictly for some head
    assert (per_batch <= per_example + 1e-6).all() and (per_example - per_batch).max() > 1e-4
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())

def test_head_importance_normalises_both_gradients():
    model, batches = tiny_model('gpt2'), make_batches(1)
    s = head_importance(model, batches, ['gradient', 'gradient_batch', 'combined'])
    raw = head_importance(model, batches, ['gradient', 'gradient_batch'], normalize=False)
    for k in ('gradient', 'gradient_batch'):
        assert torch.allclose(s[k], raw[k] / raw[k].norm(dim=-1, keepdim=True), atol=1e-6)
        assert torch.allclose(s[k].norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(s['gradient'], s['gradient_batch'], atol=1e-3)
    with pytest.raises(ValueError, match='fisher'): head_importance(model, batches, ['fisher'])

def test_induction_probe_on_tiny_models():
    model = tiny_model('gpt2')
    text = torch.randint(1, TINY_VOCAB, (3, 40), generator=torch.Generator().manual_seed(3))   # stand-in "text"
    ids = induction_batch(seq_len=10, batch=5, seed=0, source=text)
    assert ids.shape == (5, 20) and torch.equal(ids[:, :10], ids[:, 10:])
    res = induction_score(model, seq_len=10, batch=5, source=text)
    assert set(res) == {'loss_first', 'loss_second', 'score'} and all(math.isfinite(v) for v in res.values())
    assert res == induction_score(model, seq_len=10, batch=5, source=text)               # seeded
    assert abs(res['score']) < 1, res                                                    # a random model does not copy
    batches = [{'input_ids': text, 'attention_mask': torch.ones_like(text)}]
    ev = evaluate(model, batches, induction={'seq_len': 10, 'batch': 5})
    assert ev['induction_score'] == res['score'] and ev['induction_loss_second'] == res['loss_second']
    with pytest.raises(ValueError, match='fewer than seq_len=200'): evaluate(model, batches, induction={'seq_len': 200})
    for family in ('gpt2', 'llama'):
        heads = induction_head_scores(tiny_model(family), ids, seq_len=10)
        assert heads.shape == head_counts(tiny_model(family))[:2] and ((heads >= 0) & (heads <= 1)).all()

@pytest.fixture(scope='module')
def sentinel_tiny():
    from sentinel_nb.data import load_corpus, get_dataloaders
    model, tok = load_model('sentinel-tiny', device='cpu')
    return model, list(get_dataloaders(load_corpus('shakespeare'), tok, 128, 8, max_blocks=16)['validation'])

def test_sentinel_tiny_probe_reads_text_not_rare_tokens(sentinel_tiny):
    "Random rare tokens are out of distribution for sentinel-tiny (worse than uniform); text spans are not."
    model, val = sentinel_tiny
    rare, text = induction_score(model, seq_len=32, batch=16), induction_score(model, seq_len=32, batch=16, source=val)
    assert rare['loss_first'] > math.log(4096) and rare['score'] < 0, rare
    assert text['loss_first'] < math.log(4096) - 3, text
    # sentinel-tiny has not learnt to copy: no head attends to the induction key more than a uniform head (~1/48)
    heads = induction_head_scores(model, induction_batch(seq_len=32, batch=16, seed=1, source=val), 32)
    assert heads.max() < 2 / 48 and abs(text['score']) < 0.3, (heads.max(), text)

@pytest.mark.slow
def test_smollm2_copying_heads_carry_the_probe():
    "Gating off SmolLM2's 5 most induction-like heads (ranked on other spans) costs the probe > 3x what 5 random heads cost."
    from sentinel_nb.data import load_corpus, get_dataloaders
    model, tok = load_model('smollm2-135m', device='cpu')
    val = list(get_dataloaders(load_corpus('shakespeare'), tok, 128, 8, max_blocks=16)['validation'])
    L, H = head_counts(model)[:2]
    ranked = induction_head_scores(model, induction_batch(seq_len=32, batch=8, seed=1, source=val), 32).flatten().argsort(descending=True).tolist()
    def probe_without(heads):
        with HeadGates(model) as g:
            for i in heads: g.gates[i // H, i % H] = 0.
            return induction_score(model, seq_len=32, batch=8, seed=0, source=val)['score']
    intact, top = probe_without([]), probe_without(ranked[:5])
    draws = [[i for i in torch.randperm(L * H, generator=torch.Generator().manual_seed(s)).tolist() if i not in ranked[:5]][:5]
             for s in range(5)]
    rand = sum(map(probe_without, draws)) / len(draws)
    print(f'intact {intact:.3f}, top 5 off {top:.3f}, random 5 off {rand:.3f}')
    assert intact > 2
    assert intact - top > 3 * max(intact - rand, 0.05), (intact, top, rand)
