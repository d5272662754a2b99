"Views that need a model (sentinel_nb.views) on tiny random models and a tiny real run: grid, head pattern, entropy, checkpoints, generations."
import copy, json, math, warnings
import numpy as np, pandas as pd, pytest, torch
from sentinel_nb.models import tiny_model, tiny_tokenizer
from sentinel_nb.gates import HeadGates
from sentinel_nb.metrics import perplexity, degeneration_metrics
from sentinel_nb.cycle import run_plasticity
from sentinel_nb.log import CheckpointError
from sentinel_nb.viz import STATE_COLORS, head_label
from sentinel_nb.views import (attention_patterns, attention_grid, head_pattern, attention_entropy, entropy_by_head, compare_heads,
                               load_checkpoint_model, checkpoint_folder, compare_generations, generations_table, token_labels,
                               GENERATION_COLUMNS)

PROMPT = 'To be, or not to be, that is the question'

@pytest.fixture(scope='module', autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

@pytest.fixture(scope='module')
def tok(): return tiny_tokenizer()

@pytest.fixture
def gated():
    "A tiny GPT-2 (2 x 4 heads) with a pruned, a ramping grown, a fully grown and a protected head."
    model = tiny_model('gpt2'); g = HeadGates(model).install()
    g.state.active[1, 2] = False
    g.state.grown_at[0, 1], g.state.ramp_steps[0, 1] = 0, 20
    g.state.grown_at[1, 3], g.state.ramp_steps[1, 3] = 0, 2
    g.state.protected[0, 0] = True
    g.set_step(5)
    return model

EXPECTED = {(1, 2): 'pruned', (0, 1): 'grown, ramping', (1, 3): 'grown', (0, 0): 'protected', (1, 1): 'original'}

def test_grid_has_a_thumbnail_per_head_framed_in_its_state(gated, tok):
    fig = attention_grid(gated, tok, PROMPT)
    heatmaps = [t for t in fig.data if t.type == 'heatmap']
    assert len(heatmaps) == 2 * 4 and [(t.meta['layer'], t.meta['head']) for t in heatmaps] == [(l, h) for l in range(2) for h in range(4)]
    frames = {s.name: s.line.color for s in fig.layout.shapes}
    assert len(frames) == 8
    for (l, h), state in EXPECTED.items(): assert frames[head_label(l, h)] == STATE_COLORS[state]
    # the frame moves with the state: unprune the head and its frame turns "original"
    HeadGates.of(gated).state.active[1, 2] = True
    assert {s.name: s.line.color for s in attention_grid(gated, tok, PROMPT).layout.shapes}['L1.H2'] == STATE_COLORS['original']
    assert len([t for t in attention_grid(gated, tok, PROMPT, layers=1).data if t.type == 'heatmap']) == 4
    with pytest.raises(ValueError, match='pick layers'): attention_grid(gated, tok, PROMPT, max_heads=7)

def test_grid_labels_query_heads_with_their_kv_group(tok):
    fig = attention_grid(tiny_model('llama'), tok, PROMPT)   # 4 query heads, 2 key/value heads
    assert [a.text for a in fig.layout.annotations][:8] == ['L0.H0 kv0', 'L0.H1 kv0', 'L0.H2 kv1', 'L0.H3 kv1',
                                                            'L1.H0 kv0', 'L1.H1 kv0', 'L1.H2 kv1', 'L1.H3 kv1']
    assert [a.text for a in attention_grid(tiny_model('gpt2'), tok, PROMPT).layout.annotations][:2] == ['L0.H0', 'L0.H1']

@pytest.mark.parametrize('kind', ['gpt2', 'llama'])
def test_head_pattern_axes_are_tokens_and_values_the_models_weights(kind, tok):
    model = tiny_model(kind)
    ids = tok(PROMPT)['input_ids']
    with torch.no_grad(): ref = model(input_ids=torch.tensor([ids]), output_attentions=True).attentions
    for l, h in [(0, 1), (1, 3)]:
        fig = head_pattern(model, tok, PROMPT, layer=l, head=h)
        labels = token_labels([tok.decode([i]) for i in ids])
        assert list(fig.layout.xaxis.ticktext) == labels == list(fig.layout.yaxis.ticktext)
        assert np.abs(np.array(fig.data[0].z) - ref[l][0, h].numpy()).max() < 1e-6
        assert fig.data[0].text[2][1].startswith('query 2 ,') and f'{ref[l][0, h, 2, 1].item():.4f}' in fig.data[0].text[2][1]
    with pytest.raises(ValueError, match='not a head'): head_pattern(model, tok, PROMPT, layer=2, head=0)

def test_patterns_of_an_sdpa_model_and_bound_tokens(tok):
    sdpa = tiny_model('gpt2'); sdpa.set_attn_implementation('sdpa')           # switched to eager for the pass, then back
    torch.testing.assert_close(attention_patterns(sdpa, tok, PROMPT)['attentions'],
                               attention_patterns(tiny_model('gpt2'), tok, PROMPT)['attentions'], atol=1e-6, rtol=0)
    assert sdpa.config._attn_implementation == 'sdpa'
    p = attention_patterns(tiny_model('gpt2'), tok, PROMPT * 10, max_tokens=12)
    assert p['attentions'].shape == (2, 4, 12, 12) and p['truncated'] and len(p['tokens']) == 12
    assert token_labels(['<script>', ' x']) == ['&lt;script&gt;', '·x']

def test_entropy_matches_a_hand_computation(gated, tok):
    p = attention_patterns(gated, tok, PROMPT)
    fig = entropy_by_head(p)
    ent = np.array(fig.data[0].z)
    assert ent.shape == (2, 4)
    for l in range(2):
        for h in range(4):
            rows = p['attentions'][l, h].tolist()
            hand = sum(-sum(x * math.log(x) for x in row if x > 0) for row in rows) / len(rows)
            assert abs(ent[l, h] - hand) < 1e-5
    g = HeadGates.of(gated)
    with g.recording():
        with torch.no_grad(): gated(input_ids=torch.tensor([p['input_ids']]))
    torch.testing.assert_close(attention_entropy(p), g.stats()['entropy'], atol=1e-5, rtol=0)

def test_compare_generations_same_seed_same_text_pruned_differs(tok):
    base = tiny_model('gpt2'); pruned = copy.deepcopy(base); g = HeadGates(pruned).install()
    g.state.active[:, :2] = False
    held_out = [tok([PROMPT], return_tensors='pt').data]
    df = compare_generations({'a': base, 'b': copy.deepcopy(base), 'pruned': pruned}, tok, ['To be', 'Or to take'], seed=3,
                             max_new_tokens=12, eval_batches=held_out)
    assert list(df.columns) == GENERATION_COLUMNS and len(df) == 6
    texts = {n: list(d['text']) for n, d in df.groupby('model')}
    assert texts['a'] == texts['b'] and texts['pruned'] != texts['a']
    ppl = df.groupby('model')['perplexity'].first()
    assert ppl['a'] == ppl['b'] and abs(ppl['pruned'] - perplexity(pruned, held_out)) < 1e-9 and ppl['pruned'] != ppl['a']
    for _, r in df.iterrows():   # each row's metrics are those of its own text
        d = degeneration_metrics(r['text'])
        assert (r['repetition'], r['distinct_1'], r['distinct_2']) == (d['rep_3'], d['distinct_1'], d['distinct_2'])
    with pytest.raises(ValueError, match='max_new_tokens'): compare_generations({'a': base}, tok, ['x'], max_new_tokens=0)
    with pytest.raises(ValueError, match='non-empty'): compare_generations({'a': base}, tok, [])

def test_generations_table_escapes_every_generated_text(tok):
    df = compare_generations({'<i>m</i>': tiny_model('gpt2')}, tok, ['say <b>hi</b>'], max_new_tokens=4)
    df.loc[0, 'text'] = '<script>alert(1)</script>'       # what a model could write
    table = generations_table(df)
    assert '<script>' not in table and '&lt;script&gt;alert(1)&lt;/script&gt;' in table
    assert '<b>hi' not in table and '&lt;b&gt;hi&lt;/b&gt;' in table and '<i>m' not in table
    with pytest.raises(ValueError, match='lacks'): generations_table(pd.DataFrame({'x': [1]}))

from tiny_data import tiny_data   # shared tiny loaders (tests/tiny_data.py)

def test_checkpoints_of_a_real_run_load_and_compare(tmp_path, tok):
    data = tiny_data()
    out = tmp_path/'run'
    log = run_plasticity(tiny_model('gpt2'), data, out=out, cycles=1, steps=4, warmup_max_steps=4, warmup_window=2, score_batches=1,
                         eval_batches=1, ramp_steps=6, prune_level=0.25, grow_ratio=0.5, progress=False)
    prune, grow = log.filter('prune')[0], log.filter('grow')[0]
    assert checkpoint_folder(out) == out/'cycle-1'
    base = tiny_model('gpt2')
    start, cycle1 = load_checkpoint_model(out/'warmup', base), load_checkpoint_model(out, base)
    saved = json.loads((out/'cycle-1'/'head_state.json').read_text())
    assert HeadGates.of(cycle1).state.active.tolist() == saved['active'] and HeadGates.of(start).state.active.all()
    assert not HeadGates.of(cycle1).state.active.equal(HeadGates(base).state.active)   # the caller's model was not changed
    fig = compare_heads(start, cycle1, tok, PROMPT, prune.heads, names=('warm-up', 'cycle 1'))
    states = {(t.meta['model'], t.meta['layer'], t.meta['head']): t.meta['state'] for t in fig.data}
    for l, h in prune.heads:
        assert states[('warm-up', l, h)] == 'original'
        assert states[('cycle 1', l, h)] == ('grown, ramping' if [l, h] in grow.heads or (l, h) in grow.heads else 'pruned')
    df = compare_generations({'warm-up': out/'warmup', 'cycle 1': out/'cycle-1'}, tok, ['To be'], max_new_tokens=6,
                             base_model=base, eval_batches=[next(iter(data['validation']))])
    assert list(df['model']) == ['warm-up', 'cycle 1']
    assert abs(df['perplexity'][1] - log.filter('learn')[-1].metrics_after['perplexity']) < 1e-4 * df['perplexity'][1]
    with pytest.raises(ValueError, match='pass the model the run started from'): load_checkpoint_model(out/'cycle-1')
    # a gated base model: its copy's hooks (a pruned head) are dropped, silently; the base keeps its own gates
    gated_base = copy.deepcopy(base); HeadGates(gated_base).install().state.active[0, 0] = False
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        from_gated = load_checkpoint_model(out/'warmup', gated_base)
    ids = torch.tensor([tok(PROMPT)['input_ids']])
    with torch.no_grad(): torch.testing.assert_close(from_gated(input_ids=ids).logits, start(input_ids=ids).logits, atol=0, rtol=0)
    assert not HeadGates.of(gated_base).state.active[0, 0] and HeadGates.of(gated_base).installed
    with pytest.raises(CheckpointError, match='neither a checkpoint'): compare_generations({'x': tmp_path/'nope'}, tok, ['x'])
