"""How the committed full benchmark is put together from its runs:

    python tools/combine_bench.py BASE_FULL.json NEW_RUN.json [NEW_RUN.json ...] [--changed MODEL ...]

Every row of BASE_FULL.json is kept unless a NEW_RUN measured it again (same model, method, fraction and seed); then
the new row replaces it, and it must reproduce the old test perplexity (rel 1e-6: the same settings must give the same
run) unless its model is one of --changed, whose benchmark settings changed since BASE_FULL was measured (say which in
the commit). Writes bench/results/bench-full-<time>.json and .md (`combine_results`); its commands are BASE_FULL's,
the new runs' and this one.

History: bench-full-20261201-173001 combined the first full run (measured at df664bf, when the cycle's default regrew
half of each cycle's pruned heads; its rows renamed to the names their settings have now: 'plasticity' became
'regrow_half', 'no_regrowth' became 'plasticity') with 30 % reruns that reproduced it. Then SmolLM2-135M's settings
changed from 2 score batches to the default 4 (two scored too little to choose heads by: see the SmolLM2 sweep), so its
gradient, plasticity and regrow_half rows were measured again (--changed smollm2-135m)."""
import argparse, json, math, sys
from pathlib import Path
from sentinel_nb.benchmark import combine_results, _rows_of

def key(r): return (r['model'], r['method'], round(r['target_fraction'], 4), r['seed'])

p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
p.add_argument('base'); p.add_argument('new', nargs='+'); p.add_argument('--changed', nargs='*', default=[])
a = p.parse_args()
base_path, new_paths = Path(a.base), [Path(x) for x in a.new]
base_by_key = {key(r): r for r in _rows_of(base_path)}
for r in (r for x in new_paths for r in _rows_of(x)):
    o = base_by_key.pop(key(r), None)
    if o is None: continue
    same = math.isclose(o['test_perplexity'], r['test_perplexity'], rel_tol=1e-6)
    if not same and r['model'] not in a.changed:
        sys.exit(f"{key(r)}: the rerun measured {r['test_perplexity']:.6f}, the base row {o['test_perplexity']:.6f}: not the same run "
                 f"(if {r['model']}'s settings changed, name it in --changed)")
    print(f"{key(r)}: {'reproduced' if same else 'replaced (settings changed)'}: {o['test_perplexity']:.4f} -> {r['test_perplexity']:.4f}",
          file=sys.stderr)
kept = Path('/tmp') / f'{base_path.stem}.kept.rows.jsonl'
kept.write_text(''.join(json.dumps(r) + '\n' for r in base_by_key.values()))
commands = json.loads(base_path.read_text())['meta']['command'].split(' ; ') + \
           [json.loads(x.read_text())['meta']['command'] for x in new_paths if x.suffix == '.json'] + \
           ['python tools/combine_bench.py ' + ' '.join(sys.argv[1:])]
path = combine_results([kept, *new_paths], out=Path(__file__).resolve().parent.parent/'bench'/'results', commands=commands)
kept.unlink()
print(path)
