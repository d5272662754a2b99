"""Keep the demo's result: `python tools/demo_result.py RUN_DIR` writes bench/results/demo-<time>.json (the command, the
phase table and the verdict against the dense control, all read from the run's log) for the results page and README.

The demo is `sentinel run --model sentinel-tiny --corpus shakespeare --cycles 2 --out RUN_DIR --overwrite`."""
import json, platform, sys, time
from pathlib import Path
import torch
from sentinel_nb.log import read_run_info
from sentinel_nb.viz import as_log, metrics_table, against_control
from sentinel_nb.report import reproduce_command

run = Path(sys.argv[1]); log = as_log(run); info = read_run_info(run)
verdict = against_control(log)
if verdict is None: sys.exit(f"{run} has no dense control: run the demo to its end (dense control on)")
table = metrics_table(log)
out = Path(__file__).resolve().parent.parent/'bench'/'results'/f"demo-{time.strftime('%Y%m%d-%H%M', time.gmtime())}.json"
out.write_text(json.dumps({'command': 'sentinel run --model sentinel-tiny --corpus shakespeare --cycles 2 --out runs/demo --overwrite',
                           'reproduce': reproduce_command(info), 'created': info.get('created'), 'machine': platform.machine(),
                           'torch': torch.__version__, 'against_control': verdict,
                           'phases': table[['phase', 'step', 'perplexity', 'active_heads']].to_dict('records')}, indent=1, default=float))
print(out)
