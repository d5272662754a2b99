"""Speed and memory of pruning, measured in one run on this machine: ratios, never absolute thresholds.

    python bench/bench.py                    # sentinel-tiny and smollm2-135m (a few minutes on 2 CPU cores)
    python bench/bench.py --models sentinel-tiny --quick

Writes bench/results/bench-<time>.json (every number) and .md (the tables), and prints the tables.
- inference: dense vs masked (HeadGates) vs physically pruned (physical.prune_physically) at 10/30/50 % of the heads,
  batch 1 and 16, 128 tokens, SDPA attention; the speedup next to the ideal one (the FLOPs removed), the share of the
  ideal saving realised, and the parameter memory;
- training step: with gates and the update scaler (a third of the heads pruned) vs the plain model; SDPA vs eager;
- scoring every head (head_importance on the run's score batches) vs one training step on the same batches;
- the update scaler's own share of a training step at 10/30/50/90 % pruned (its hooks timed inside the step), masked and
  physically pruned (a run with physical=True), and the physical step's time over the masked one.
Each timing is the median of repeated runs, variants interleaved (A B C A B C ...) so drift hits all alike.
"""
from __future__ import annotations
import argparse, copy, json, math, platform, statistics, sys, time
from datetime import datetime, timezone
from pathlib import Path
import torch
from sentinel_nb.models import head_counts, set_attention
from sentinel_nb.loading import load_model
from sentinel_nb.data import load_corpus, get_dataloaders
from sentinel_nb.gates import HeadGates
from sentinel_nb.importance import head_importance
from sentinel_nb.train import FineTuner
from sentinel_nb.physical import prune_physically, layout_of

ROOT = Path(__file__).resolve().parent

def pattern(L: int, H: int, fraction: float, seed: int) -> list[tuple[int, int]]:
    "`fraction` of the heads, drawn at random (seeded), at least one left in every layer: an uneven pattern."
    g = torch.Generator().manual_seed(seed)
    order = [(l, h) for l, h in (divmod(int(i), H) for i in torch.randperm(L * H, generator=g))]
    out, left = [], {l: H for l in range(L)}
    for l, h in order:
        if len(out) >= round(fraction * L * H): break
        if left[l] > 1: out.append((l, h)); left[l] -= 1
    return out

def gated_copy(model, heads=()) -> tuple:
    "`(copy of model, its installed HeadGates)` with `heads` [(layer, head)] switched off (masked)."
    m = copy.deepcopy(model); g = HeadGates(m).install()
    for l, h in heads: g.state.active[l, h] = False
    return m, g

def forward_flops(model, heads_per_layer: list[int], kv_per_layer: list[int], seq: int) -> float:
    "Multiply-adds of one forward per token position x 2, attention with the given heads per layer (the MLP unchanged)."
    cfg = model.config
    L, H, KV, D = head_counts(model)
    d = cfg.hidden_size if hasattr(cfg, 'hidden_size') else cfg.n_embd
    inter = getattr(cfg, 'intermediate_size', None) or getattr(cfg, 'n_inner', None) or getattr(cfg, 'ffn_dim', None) or 4 * d
    gated = 3 if cfg.model_type in ('llama', 'mistral', 'qwen2', 'qwen3') else 2       # gate, up, down vs fc1, fc2
    vocab = cfg.vocab_size
    f = 0.
    for h, kv in zip(heads_per_layer, kv_per_layer):
        f += 2 * d * D * (2 * h + 2 * kv)          # q and o (h heads), k and v (kv heads)
        f += 2 * 2 * h * D * seq / 2                # scores and weighted sum, causal: half the keys on average
        f += 2 * gated * d * inter
    return f + 2 * d * vocab                         # the LM head

def median_times(fns: dict, reps: int, warmup: int = 2) -> dict:
    "Median seconds of each callable, interleaved."
    for _ in range(warmup):
        for fn in fns.values(): fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter(); fn(); times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}

def param_mb(model) -> float: return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20

def inference(name: str, levels, batches, reps: int, seq: int = 128) -> list[dict]:
    base, _ = load_model(name)
    set_attention(base, 'sdpa')
    L, H, KV, D = head_counts(base)
    rows = []
    for level in levels:
        heads = pattern(L, H, level, seed=0)
        masked, g = gated_copy(base, heads)
        physical, pg = gated_copy(base, heads)
        layout = prune_physically(physical, pg)                  # removes pg's hooks, folds the gates in
        per_layer = [len([h for h in hs if h >= 0]) for hs in layout.heads]
        kv_per_layer = [len(k) for k in layout.kv_heads] if getattr(layout, 'kv_heads', None) else per_layer
        f_dense = forward_flops(base, [H] * L, [KV] * L, seq)
        f_pruned = forward_flops(base, per_layer, kv_per_layer, seq)
        for b in batches:
            ids = torch.randint(1, base.config.vocab_size, (b, seq), generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                diff = (masked(ids).logits - physical(ids).logits).abs().max().item()
                t = median_times({'dense': lambda: base(ids), 'masked': lambda: masked(ids), 'physical': lambda: physical(ids)}, reps)
            ideal = f_dense / f_pruned
            saved_time, saved_flops = 1 - t['physical'] / t['dense'], 1 - f_pruned / f_dense
            rows.append({'model': name, 'pruned_%': round(100 * len(heads) / (L * H)), 'batch': b, 'seq': seq,
                         'dense_s': t['dense'], 'masked_s': t['masked'], 'physical_s': t['physical'],
                         'masked_speedup': t['dense'] / t['masked'], 'physical_speedup': t['dense'] / t['physical'],
                         'ideal_speedup': ideal, 'share_of_ideal_saving': saved_time / saved_flops,
                         'params_mb_dense': param_mb(base), 'params_mb_physical': param_mb(physical),
                         'max_abs_logit_diff_masked_vs_physical': diff,
                         'tokens_per_s_dense': b * seq / t['dense'], 'tokens_per_s_physical': b * seq / t['physical']})
            print(f"  {name} {rows[-1]['pruned_%']}% b{b}: physical x{rows[-1]['physical_speedup']:.3f} (ideal x{ideal:.3f}), "
                  f"masked x{rows[-1]['masked_speedup']:.3f}", file=sys.stderr, flush=True)
        g.remove()
    return rows

def step_times(model, gates, batches, steps: int) -> list[float]:
    "Seconds of each of `steps` optimizer steps (after 2 not counted)."
    tuner = FineTuner(model, gates, lr=1e-5, warmup_steps=0, seed=0)
    out, gen = [], tuner.train_steps(batches, steps + 2)
    t0 = time.perf_counter()
    for _ in gen:
        t1 = time.perf_counter(); out.append(t1 - t0); t0 = t1
    tuner.close()
    return out[2:]

def training(name: str, steps: int, batch: int, seq: int = 128) -> dict:
    model, tok = load_model(name)
    data = get_dataloaders(load_corpus('shakespeare'), tok, block_size=seq, batch_size=batch, max_blocks=64, seed=0)
    L, H, _, _ = head_counts(model)
    res = {'model': name, 'batch': batch, 'seq': seq, 'steps': steps}
    # gates + update scaler with a third of the heads pruned vs no gates, both SDPA; then eager vs SDPA with gates
    def gated(impl):
        m, g = gated_copy(model, pattern(L, H, 1 / 3, seed=0)); set_attention(m, impl)
        return m, g
    runs = {}
    for rnd in range(2):                                   # interleaved rounds: plain, gated, gated eager
        for key in ('plain_sdpa', 'gated_sdpa', 'gated_eager'):
            if key == 'plain_sdpa': m = copy.deepcopy(model); set_attention(m, 'sdpa'); g = None
            else: m, g = gated(key.split('_')[1])
            runs.setdefault(key, []).extend(step_times(m, g, data['train'], steps))
            if g is not None: g.remove()
    med = {k: statistics.median(v) for k, v in runs.items()}
    res.update({f'{k}_step_s': v for k, v in med.items()})
    res['gate_overhead'] = med['gated_sdpa'] / med['plain_sdpa']
    res['eager_over_sdpa'] = med['gated_eager'] / med['gated_sdpa']
    # scoring every head (the runner's 4 score batches, every method) vs one training step on those batches
    batches = [b for _, b in zip(range(4), data['train'])]
    m, g = gated('sdpa')
    t = median_times({'score': lambda: head_importance(m, batches, max_batches=4)}, reps=3, warmup=1)['score']
    res['score_s'] = t
    res['score_over_step'] = t / med['gated_sdpa']
    g.remove()
    print(f"  {name} training: gates x{res['gate_overhead']:.3f}, eager/sdpa x{res['eager_over_sdpa']:.3f}, "
          f"scoring = {res['score_over_step']:.1f} steps", file=sys.stderr, flush=True)
    return res

def _timed_steps(m, g, batches, steps: int) -> tuple[float, float]:
    "Median seconds of the update scaler's hooks and of the whole step, over `steps` optimizer steps (after 1 not counted)."
    from sentinel_nb.gates import HeadUpdateScaler
    tuner = FineTuner(m, g, lr=1e-5, warmup_steps=0, seed=0)
    sc: HeadUpdateScaler = tuner.scaler
    for hnd in sc._handles: hnd.remove()
    spent, before, after = [], sc._before, sc._after
    def timed_before(*a, **k): t = time.perf_counter(); before(*a, **k); spent.append(time.perf_counter() - t)
    def timed_after(*a, **k): t = time.perf_counter(); after(*a, **k); spent[-1] += time.perf_counter() - t
    sc._handles = [sc.optimizer.register_step_pre_hook(timed_before), sc.optimizer.register_step_post_hook(timed_after)]
    step_s, t0 = [], time.perf_counter()
    for _ in tuner.train_steps(batches, steps + 1):
        t1 = time.perf_counter(); step_s.append(t1 - t0); t0 = t1
    tuner.close()
    return statistics.median(spent[1:]), statistics.median(step_s[1:])

def scaler_share(name: str, levels=(0.1, 0.3, 0.5, 0.9), steps: int = 4, batch: int = 4, seq: int = 128) -> list[dict]:
    """The update scaler's own time (its hooks around `optimizer.step`, timed inside the step) as a share of the step,
    at each pruning level: a direct measure, where a ratio of whole steps drowns in this machine's noise. Masked (the
    pruned heads' slices are frozen by the scaler) and physically pruned with the gates still on, as in a run with
    `physical=True` (nothing left to freeze), and that step's time over the masked step."""
    model, tok = load_model(name); set_attention(model, 'sdpa')
    data = get_dataloaders(load_corpus('shakespeare'), tok, block_size=seq, batch_size=batch, max_blocks=32, seed=0)
    L, H, _, _ = head_counts(model)
    rows = []
    for level in levels:
        heads = pattern(L, H, level, seed=0)
        m, g = gated_copy(model, heads)
        hs, st = _timed_steps(m, g, data['train'], steps); g.remove()
        m, g = gated_copy(model); prune_physically(m, heads)   # a list: the gates stay on, and mark them pruned
        phs, pst = _timed_steps(m, g, data['train'], steps); g.remove()
        rows.append({'model': name, 'pruned_%': round(100 * len(heads) / (L * H)), 'batch': batch, 'seq': seq,
                     'scaler_ms': 1000 * hs, 'step_ms': 1000 * st, 'scaler_share_%': 100 * hs / st,
                     'physical_scaler_ms': 1000 * phs, 'physical_step_ms': 1000 * pst, 'physical_scaler_share_%': 100 * phs / pst,
                     'physical_step_over_masked': pst / st})
        r = rows[-1]
        print(f"  {name} {r['pruned_%']}%: update scaler {r['scaler_share_%']:.2f} % of the masked step, "
              f"{r['physical_scaler_share_%']:.2f} % physical; physical step x{r['physical_step_over_masked']:.3f}", file=sys.stderr, flush=True)
    return rows

def markdown(inf: list[dict], tr: list[dict], meta: dict, sc: list[dict] = ()) -> str:
    out = [f"Measured {meta['time']} on {meta['machine']} (torch {meta['torch']}, {meta['threads']} threads); command: `{meta['command']}`"]
    if inf: out += ['', '| model | pruned | batch | dense ms | masked × | physical × | ideal × | share of ideal saving | params MB dense → physical | max \\|Δ logits\\| |',
                    '|---|---|---|---|---|---|---|---|---|---|']
    for r in inf:
        out.append(f"| {r['model']} | {r['pruned_%']} % | {r['batch']} | {1000 * r['dense_s']:.1f} | {r['masked_speedup']:.3f} | "
                   f"{r['physical_speedup']:.3f} | {r['ideal_speedup']:.3f} | {r['share_of_ideal_saving']:.2f} | "
                   f"{r['params_mb_dense']:.1f} → {r['params_mb_physical']:.1f} | {r['max_abs_logit_diff_masked_vs_physical']:.1e} |")
    if tr: out += ['', '| model | batch × seq | plain step ms | gates + scaler (⅓ pruned) × | eager / SDPA × | scoring all heads, in steps |',
                   '|---|---|---|---|---|---|']
    for r in tr:
        out.append(f"| {r['model']} | {r['batch']} × {r['seq']} | {1000 * r['plain_sdpa_step_s']:.1f} | {r['gate_overhead']:.3f} | "
                   f"{r['eager_over_sdpa']:.3f} | {r['score_over_step']:.1f} |")
    if sc:
        out += ['', '| model | pruned | batch × seq | masked: scaler ms | step ms | scaler share | physical: scaler ms | step ms | scaler share | physical step / masked step |',
                '|---|---|---|---|---|---|---|---|---|---|']
        out += [f"| {r['model']} | {r['pruned_%']} % | {r['batch']} × {r['seq']} | {r['scaler_ms']:.2f} | {r['step_ms']:.0f} | "
                f"{r['scaler_share_%']:.2f} % | {r['physical_scaler_ms']:.2f} | {r['physical_step_ms']:.0f} | "
                f"{r['physical_scaler_share_%']:.2f} % | {r['physical_step_over_masked']:.3f} |" for r in sc]
    return '\n'.join(out) + '\n'

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--models', nargs='+', default=['sentinel-tiny', 'smollm2-135m'])
    p.add_argument('--quick', action='store_true', help='fewer repeats and steps (a smoke run, not for quoting)')
    p.add_argument('--out', default=str(ROOT/'results'))
    p.add_argument('--only', nargs='+', choices=['inference', 'training', 'scaler'], default=['inference', 'training', 'scaler'],
                   help='the parts to measure (default: all)')
    a = p.parse_args(argv)
    reps, steps = (2, 2) if a.quick else (7, 8)
    meta = {'time': datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'), 'machine': f"{platform.machine()} {platform.processor() or ''}".strip(),
            'torch': torch.__version__, 'threads': torch.get_num_threads(), 'command': 'python bench/bench.py ' + ' '.join(argv or sys.argv[1:]),
            'cuda': torch.cuda.is_available()}
    inf, tr, sc = [], [], []
    for name in a.models:
        if 'inference' in a.only: inf += inference(name, (0.1, 0.3, 0.5), (1, 16), reps)
        if 'training' in a.only: tr.append(training(name, steps, batch=8 if name == 'sentinel-tiny' else 4))
        if 'scaler' in a.only: sc += scaler_share(name, steps=2 if a.quick else 4, batch=8 if name == 'sentinel-tiny' else 4)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    stem = out/f"bench-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M')}"
    stem.with_suffix('.json').write_text(json.dumps({'meta': meta, 'inference': inf, 'training': tr, 'scaler': sc}, indent=1))
    md = markdown(inf, tr, meta, sc); stem.with_suffix('.md').write_text(md)
    print(md); print(f"written: {stem}.json, {stem}.md", file=sys.stderr)

if __name__ == '__main__':
    main()
