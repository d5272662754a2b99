"""Which prune strategy is best? Measured on VALIDATION data, over several score seeds and random draws.

For one model: prune `--level` of the heads with no fine-tuning by each strategy, scores computed from
`--score-batches` training batches drawn with each of `--seeds` seeds (the way the plasticity runner draws them),
`random` from `--random-draws` seeded draws, and measure perplexity on a fixed slice of the first `--eval-blocks`
validation blocks. Prints a markdown table (mean +- std, min, max per strategy, and the dense perplexity) and
writes it, with every single value and the scoring time per seed, under `--out` (one entry per model).

    OMP_NUM_THREADS=1 python tools/strategy_table.py --model sentinel-tiny
    OMP_NUM_THREADS=1 python tools/strategy_table.py --model smollm2-135m --seeds 3 --random-draws 10 --eval-blocks 32
"""
import argparse, json, math, statistics, sys, time
from pathlib import Path
import torch
from sentinel_nb.loading import load_model
from sentinel_nb.data import load_corpus, get_dataloaders
from sentinel_nb.gates import HeadGates
from sentinel_nb.importance import head_importance, random_scores, METHODS
from sentinel_nb.prune import prune_heads, restore_heads, STRATEGIES
from sentinel_nb.metrics import perplexity
from sentinel_nb.cycle import seeded_loader, take_batches

ROOT = Path(__file__).resolve().parent.parent
SCORED = ('entropy', 'entropy_high', 'gradient', 'gradient_batch', 'magnitude', 'combined')   # scores from data


def summary(values: list[float]) -> dict:
    return {'n': len(values), 'mean': statistics.fmean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.,
            'min': min(values), 'max': max(values), 'values': values}


def measure(model_name: str, level: float, seeds: int, random_draws: int, eval_blocks: int, score_batches: int,
            batch_size: int, corpus: str, say=print) -> dict:
    unknown = [s for s in SCORED + ('random',) if s not in STRATEGIES]
    if unknown: raise ValueError(f'strategies {unknown} are not in prune.STRATEGIES ({", ".join(STRATEGIES)})')
    model, tok = load_model(model_name, device='cpu')
    data = get_dataloaders(load_corpus(corpus), tok, block_size=128, batch_size=batch_size)
    val = take_batches(seeded_loader(data['validation'], 0, shuffle=False), math.ceil(eval_blocks / batch_size))   # fixed slice
    n_tokens = sum(int(b['input_ids'][:, 1:].numel()) for b in val)
    values = {s: [] for s in SCORED + ('random',)}
    score_seconds = []
    with HeadGates(model) as g:
        t0 = time.perf_counter(); dense = perplexity(model, val)
        say(f'{model_name}: dense validation perplexity {dense:.2f} on {n_tokens} tokens ({time.perf_counter() - t0:.1f} s)')
        for seed in range(seeds):
            batches = take_batches(seeded_loader(data['train'], seed), score_batches)    # a different draw of training blocks per seed
            t0 = time.perf_counter(); scores = head_importance(model, batches, METHODS, max_batches=score_batches, seed=seed)
            score_seconds.append(time.perf_counter() - t0)
            for s in SCORED:
                pr = prune_heads(g, scores, level=level, strategy=s)
                values[s].append(perplexity(model, val)); restore_heads(g)
            say(f'  seed {seed} (scores {score_seconds[-1]:.1f} s): ' + ', '.join(f'{s} {values[s][-1]:.2f}' for s in SCORED))
        for draw in range(random_draws):
            pr = prune_heads(g, random_scores(g.n_layers, g.n_heads, seed=draw), level=level, strategy='random')
            values['random'].append(perplexity(model, val)); restore_heads(g)
        say(f'  random over {random_draws} draws: ' + ', '.join(f'{v:.1f}' for v in values['random']))
        n_pruned = pr.count
    return {'model': model_name, 'corpus': corpus, 'split': 'validation', 'level': level, 'pruned': n_pruned,
            'heads': g.n_layers * g.n_heads, 'eval_blocks': len(val) * batch_size, 'n_tokens': n_tokens,
            'score_batches': score_batches, 'batch_size': batch_size, 'seeds': seeds, 'random_draws': random_draws,
            'dense': dense, 'score_seconds': score_seconds, 'strategies': {s: summary(v) for s, v in values.items()}}


def markdown(res: dict) -> str:
    rows = sorted(res['strategies'].items(), key=lambda kv: kv[1]['mean'])
    out = [f"**{res['model']}**: {res['pruned']} of {res['heads']} heads pruned ({res['level']:.0%}), no fine-tuning; "
           f"validation perplexity on {res['eval_blocks']} blocks ({res['n_tokens']} tokens); dense **{res['dense']:.2f}**",
           '', '| strategy | draws | mean ± std | min | max |', '|---|---:|---:|---:|---:|']
    out += [f"| {s} | {r['n']} | {r['mean']:.2f} ± {r['std']:.2f} | {r['min']:.2f} | {r['max']:.2f} |" for s, r in rows]
    return '\n'.join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='sentinel-tiny'); p.add_argument('--corpus', default='shakespeare')
    p.add_argument('--level', type=float, default=0.3); p.add_argument('--seeds', type=int, default=5)
    p.add_argument('--random-draws', type=int, default=20); p.add_argument('--eval-blocks', type=int, default=96)
    p.add_argument('--score-batches', type=int, default=4); p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--threads', type=int, default=1, help='torch threads (the machine is shared)')
    p.add_argument('--out', default=str(ROOT / 'data' / 'results' / 'strategy_table.json'))
    a = p.parse_args(argv)
    if a.seeds < 2 or a.random_draws < 2: raise SystemExit('need --seeds >= 2 and --random-draws >= 2 for a spread')
    if not 0 < a.level < 1: raise SystemExit(f'--level is the fraction of heads to prune, in (0, 1); got {a.level}')
    torch.set_num_threads(a.threads)
    res = measure(a.model, a.level, a.seeds, a.random_draws, a.eval_blocks, a.score_batches, a.batch_size, a.corpus,
                  say=lambda s: print(s, file=sys.stderr, flush=True))
    print(markdown(res))
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    table = json.loads(out.read_text()) if out.exists() else {}
    table[a.model] = res
    out.write_text(json.dumps(table, indent=1) + '\n')
    print(f'\nwritten to {out}', file=sys.stderr)


if __name__ == '__main__':
    main()
