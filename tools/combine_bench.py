"""How the committed full benchmark is put together from its runs:

    python tools/combine_bench.py OLD_FULL.json NEW_RUN.json [NEW_RUN.json ...]

OLD_FULL.json was measured while the plasticity cycle's default regrew half of each cycle's pruned heads; the defaults
sweep then made no regrowth the default. Its rows are kept under the names their settings have now, which are the
same settings exactly: 'plasticity' (target, grow_ratio 0.5) is now 'regrow_half', 'no_regrowth' (target,
grow_ratio 0) is now 'plasticity'. A row that a NEW_RUN measured again (same model, method, fraction and seed: the
reruns add recovery steps) replaces the old one, and only if it reproduces the old test perplexity (rel 1e-6): the
same settings must give the same run. Writes bench/results/bench-full-<time>.json and .md (`combine_results`)."""
import json, math, sys
from pathlib import Path
from sentinel_nb.benchmark import combine_results, _rows_of

RENAMED = {'plasticity': 'regrow_half', 'no_regrowth': 'plasticity'}   # old name -> the name of the same settings now

def key(r): return (r['model'], r['method'], round(r['target_fraction'], 4), r['seed'])

old_path, new_paths = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
old = [{**r, 'method': RENAMED.get(r['method'], r['method'])} for r in _rows_of(old_path)]
new = [r for p in new_paths for r in _rows_of(p)]
old_by_key = {key(r): r for r in old}
for r in new:
    o = old_by_key.pop(key(r), None)
    if o is not None and not math.isclose(o['test_perplexity'], r['test_perplexity'], rel_tol=1e-6):
        sys.exit(f"{key(r)}: the rerun measured {r['test_perplexity']:.6f}, the old row {o['test_perplexity']:.6f}: not the same run")
    if o is not None: print(f"{key(r)} reproduced: {r['test_perplexity']:.6f}", file=sys.stderr)
kept = Path('/tmp') / f'{old_path.stem}.renamed.rows.jsonl'
kept.write_text(''.join(json.dumps(r) + '\n' for r in old_by_key.values()))
OLD_COMMIT = 'df664bf'   # the commit the old rows were measured at (its method names; grow_ratio 0.5 the default)
meta_commands = [f'(at {OLD_COMMIT}) {c}' for c in json.loads(old_path.read_text())['meta']['command'].split(' ; ')]
commands = meta_commands + [json.loads(p.read_text())['meta']['command'] for p in new_paths if p.suffix == '.json'] + \
           ['python tools/combine_bench.py ' + ' '.join(sys.argv[1:])]
path = combine_results([kept, *new_paths], out=Path(__file__).resolve().parent.parent/'bench'/'results', commands=commands)
kept.unlink()
print(path)
