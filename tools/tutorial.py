"""Execute the tutorial notebooks in a real kernel and store their outputs (figures with plotly.js embedded once, so
the docs pages work offline), then clean them as nbdev does. Run it after changing a tutorial:
    python3 tools/tutorial.py [nbs/tutorials/workbench.ipynb ...]"""
import os, subprocess, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent

def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    os.environ['SENTINEL_DOCS'] = '1'                     # the tutorial's hidden cell: plotly's 'notebook' renderer
    skipped = {i: c.source for i, c in enumerate(nb.cells) if c.cell_type == 'code' and '#| eval: false' in c.source}
    for i in skipped: nb.cells[i].source = ''              # nbdev's `eval: false` (e.g. pip install): not run here either
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=1800, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}}).execute()
    for i, src in skipped.items(): nb.cells[i].source, nb.cells[i].outputs = src, []
    nbformat.write(nb, path)
    subprocess.run(['nbdev_clean', '--fname', str(path)], check=True, cwd=ROOT)
    return time.perf_counter() - t0

if __name__ == '__main__':
    for p in sys.argv[1:] or sorted((ROOT/'nbs'/'tutorials').glob('*.ipynb')):
        s = execute(Path(p)); print(f"{p}: executed in {s:.0f}s, {Path(p).stat().st_size / 1e6:.1f} MB with outputs")
