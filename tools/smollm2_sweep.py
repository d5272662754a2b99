"""How the committed SmolLM2-135M sweep (how many batches to score heads on) is put together from its rows:

    python tools/smollm2_sweep.py ROWS.jsonl [ROWS.jsonl ...]

The rows were measured in parallel processes (`run_sweep`'s `sweep_run`, one (seed, variant) at a time), partly before
two changes to the code, so some carry the name their settings had then; each is renamed to the settings it ran with,
which give the same run now:
- measured while SmolLM2's benchmark settings scored on 2 batches: 'defaults' ran with 2 batches -> 'score_batches 2';
  'score_batches 8' ran with 4, because `head_importance` then scored at most 4 batches of those it was given (fixed
  since: it scores all of them) -> 'score_batches 4';
- measured while they scored on the default 4: 'defaults' -> 'score_batches 4'.
Rows measured with the settings of now (8 batches) keep their names. The file says all of this in its meta."""
import json, sys, time
from pathlib import Path
from dataclasses import asdict
from sentinel_nb.benchmark import PROFILES, model_settings, write_sweep, _rows_of
from sentinel_nb.cycle import PlasticityConfig

RENAMED = {  # rows file -> {old variant: (new variant, its settings)}
    'sweepA': {'defaults': ('score_batches 2', {'score_batches': 2}), 'score_batches 8': ('score_batches 4', {'score_batches': 4})},
    'sweepB': {'defaults': ('score_batches 2', {'score_batches': 2}), 'score_batches 8': ('score_batches 4', {'score_batches': 4})},
    'sweepC': {'defaults': ('score_batches 4', {'score_batches': 4})},
}
rows = []
for p in map(Path, sys.argv[1:]):
    ren = RENAMED.get(p.name.split('.')[0], {})
    for r in _rows_of(p):
        if r['variant'] in ren: r = {**r, 'variant': ren[r['variant']][0], 'settings': ren[r['variant']][1], 'measured_as': r['variant']}
        rows.append(r)
order = {'defaults': 0, 'score_batches 4': 1, 'score_batches 2': 2}
rows.sort(key=lambda r: (r['seed'], order[r['variant']]))
keys = [(r['seed'], r['variant']) for r in rows]
assert len(set(keys)) == len(keys), f"a (seed, variant) twice: {keys}"
variants = {'defaults': {}, 'score_batches 4': {'score_batches': 4}, 'score_batches 2': {'score_batches': 2}}
meta = {'profile': 'sweep', 'base_profile': 'full', 'model': 'smollm2-135m', 'fraction': 0.3, 'seeds': sorted({r['seed'] for r in rows}),
        'settings': model_settings(PROFILES['full'], 'smollm2-135m'), 'variants': variants, 'defaults': asdict(PlasticityConfig()),
        'command': "sentinel bench --sweep --models smollm2-135m --seeds 0 1 2 --fractions 0.3 --variants 'defaults' 'score_batches 4' 'score_batches 2'",
        'assembled': 'python tools/smollm2_sweep.py ' + ' '.join(Path(p).name for p in sys.argv[1:]) + ' (rows renamed: see the tool)'}
out = Path(__file__).resolve().parent.parent / 'bench' / 'results'
print(write_sweep(rows, meta, out / f"bench-sweep-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.json"))
