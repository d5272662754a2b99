"""The behaviour a refactoring of the runner must keep: a log boiled down to what each event decided and measured
(kind, cycle, step, heads, every metric, losses). `python tests/golden.py record` writes the files in tests/data from
the current code; the tests compare a new run against them (numbers to rel 1e-6, all else exactly)."""
import json, sys
from pathlib import Path

DATA = Path(__file__).parent/'data'

def summary(log) -> list[dict]:
    "Each event of `log` (an ExperimentLog) as {kind, cycle, step, heads, metrics_before/after, losses}."
    out = []
    for e in log.events:
        d = e.to_dict()
        out.append({'kind': d['kind'], 'cycle': d['cycle'], 'step': d['step'], 'heads': d['heads'],
                    'before': {k: v for k, v in d['metrics_before'].items() if isinstance(v, (int, float)) or v is None},
                    'after': {k: v for k, v in d['metrics_after'].items() if isinstance(v, (int, float)) or v is None},
                    'losses': d['info'].get('losses')})
    return out

def differences(want: list[dict], got: list[dict], rel: float = 1e-6) -> list[str]:
    "Where `got` departs from `want`: event kinds and order, heads, steps exactly; numbers to `rel`."
    if [w['kind'] for w in want] != [g['kind'] for g in got]:
        return [f"kinds: {[w['kind'] for w in want]} != {[g['kind'] for g in got]}"]
    def close(a, b): return a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= rel * max(1., abs(a)))
    diffs = []
    for i, (w, g) in enumerate(zip(want, got)):
        for k in ('cycle', 'step', 'heads'):
            if w[k] != g[k]: diffs.append(f"event {i} ({w['kind']}) {k}: {w[k]} != {g[k]}")
        for part in ('before', 'after'):
            for m in sorted(set(w[part]) | set(g[part])):
                if not close(w[part].get(m), g[part].get(m)): diffs.append(f"event {i} ({w['kind']}) {part}.{m}: {w[part].get(m)} != {g[part].get(m)}")
        if (w['losses'] is None) != (g['losses'] is None) or (w['losses'] and (len(w['losses']) != len(g['losses']) or
                                                                   not all(close(a, b) for a, b in zip(w['losses'], g['losses'])))):
            diffs.append(f"event {i} ({w['kind']}) losses differ")
    return diffs

def tiny_run(out=None):
    "Two cycles on a tiny random GPT-2 with dropout (seconds): warm-up, prune, grow, learn, dense control."
    import torch
    from sentinel_nb.models import tiny_model
    from sentinel_nb.cycle import run_plasticity
    from tiny_data import tiny_data
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try:
        return run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), tiny_data(), out=out, progress=False, cycles=2, steps=6,
                              warmup_max_steps=6, warmup_window=2, score_batches=1, eval_batches=1, ramp_steps=2, boost_steps=3,
                              prune_level=0.25, grow_ratio=0.5)
    finally: torch.set_num_threads(n)

if __name__ == '__main__' and sys.argv[1:] == ['record']:
    sys.path.insert(0, str(Path(__file__).parent))
    DATA.mkdir(exist_ok=True)
    (DATA/'golden-tiny.json').write_text(json.dumps(summary(tiny_run()), indent=0))
    print('wrote', DATA/'golden-tiny.json')
