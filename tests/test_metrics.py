"Property tests for sentinel_nb.metrics: perplexity ignores padding, batch order and batch size."
import copy, math
import pytest
import torch
from hypothesis import given, settings, HealthCheck, strategies as st
from transformers import GPT2Config, GPT2LMHeadModel
from sentinel_nb.metrics import (perplexity, nll_and_count, sliding_window_nll, sliding_window_perplexity, degeneration_metrics,
                                 evaluate, nll_to_perplexity)
from sentinel_nb.train import FineTuner

VOCAB = 50

@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=64,
                     bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    return GPT2LMHeadModel(cfg).eval()

def pad_batch(seqs, extra=0, pad_id=0):
    "Right-pad `seqs` to the longest plus `extra`: input_ids and attention_mask [batch, pos]."
    n = max(map(len, seqs)) + extra
    return {'input_ids': torch.tensor([s + [pad_id] * (n - len(s)) for s in seqs]),
            'attention_mask': torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs])}

def chunks(xs, size): return [xs[i:i + size] for i in range(0, len(xs), size)]

seqs_st = st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=2, max_size=24), min_size=1, max_size=6)
slow_settings = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

@slow_settings
@given(seqs=seqs_st, extra=st.integers(0, 8), pad_id=st.integers(0, VOCAB - 1))
def test_right_padding_invariance(model, seqs, extra, pad_id):
    base = perplexity(model, [pad_batch(seqs)])
    assert math.isclose(perplexity(model, [pad_batch(seqs, extra=extra, pad_id=pad_id)]), base, rel_tol=1e-4)

@slow_settings
@given(seqs=seqs_st, size=st.integers(1, 6), data=st.data())
def test_batch_order_and_size_invariance(model, seqs, size, data):
    base_sum, base_n = nll_and_count(model, [pad_batch(seqs)])
    assert base_n == sum(len(s) - 1 for s in seqs)
    shuffled = data.draw(st.permutations(seqs))
    total, n = nll_and_count(model, [pad_batch(c) for c in chunks(shuffled, size)])
    assert n == base_n
    assert math.isclose(math.exp(total / n), math.exp(base_sum / base_n), rel_tol=1e-4)

def test_labels_honoured(model):
    "Explicit labels of -100 are not scored; labels override input_ids as targets."
    b = pad_batch([[1, 2, 3, 4, 5]])
    b['labels'] = torch.tensor([[1, 2, -100, -100, 5]])
    assert nll_and_count(model, [b])[1] == 2

@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 60), max_length=st.integers(2, 16), data=st.data())
def test_sliding_window_scores_each_token_once(model, n, max_length, data):
    stride = data.draw(st.integers(1, max_length - 1))
    ids = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(n))
    assert sliding_window_nll(model, ids, max_length, stride)[1] == n - 1

@given(st.lists(st.text(alphabet='ab ,', max_size=30), max_size=5))
def test_degeneration_bounds(texts):
    m = degeneration_metrics(texts)
    assert all(0. <= v <= 1. for v in m.values())

def test_a_huge_finite_loss_has_infinite_perplexity_not_an_overflow_error(model):
    assert nll_to_perplexity(math.log(7.)) == pytest.approx(7.) and nll_to_perplexity(709.) == math.exp(709.)
    assert nll_to_perplexity(710.) == math.inf and math.isnan(nll_to_perplexity(math.nan))
    blown = copy.deepcopy(model)
    with torch.no_grad(): blown.lm_head.weight.mul_(1e4)              # tied embeddings: logits ~1e4 apart
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))   # [batch, pos]
    total, count = nll_and_count(blown, [{'input_ids': ids}])
    assert math.isfinite(total) and total / count > 710                  # finite, but math.exp of it overflows
    with pytest.raises(OverflowError): math.exp(total / count)
    assert perplexity(blown, [{'input_ids': ids}]) == math.inf
    assert sliding_window_perplexity(blown, ids[0], max_length=8, stride=4) == math.inf
    assert evaluate(blown, [{'input_ids': ids}], induction=False)['perplexity'] == math.inf
    assert FineTuner(blown).evaluate([{'input_ids': ids}]) == math.inf
