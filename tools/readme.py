"""Write README.md from nbs/index.ipynb (what `nbdev_readme` does with Quarto, without needing Quarto).

Markdown cells are copied; code cells not flagged `#| hide` become ```python blocks followed by their saved
text output. `python tools/readme.py --run` first executes the notebook and saves its outputs."""
import json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
nb_path, readme = root/'nbs'/'index.ipynb', root/'README.md'

def run_notebook(path):
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    nb = read_nb(path)
    CaptureShell().run_all(nb, exc_stop=True)
    write_nb(nb, path)

def text_output(o):
    if o.get('output_type') == 'stream':   # stdout only: stderr holds progress bars and warnings
        return ''.join(o.get('text', '')) if o.get('name') == 'stdout' else ''
    data = o.get('data', {})
    return ''.join(data.get('text/markdown', data.get('text/plain', '')))

def to_markdown(nb) -> str:
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source'])
        if c['cell_type'] == 'markdown': parts.append(src); continue
        if re.match(r'\s*#\s*\|\s*(hide|export|default_exp)', src): continue
        src = '\n'.join(l for l in src.splitlines() if not re.match(r'\s*#\s*\|', l))
        parts.append(f"```python\n{src}\n```")
        out = ''.join(text_output(o) for o in c.get('outputs', [])).rstrip()
        if out: parts.append('\n'.join('    ' + l for l in out.splitlines()))
    # the title and summary become a heading and a quote, as nbdev_readme writes them
    return '\n\n'.join(parts).rstrip() + '\n'

if __name__ == '__main__':
    if '--run' in sys.argv: run_notebook(nb_path)
    readme.write_text('<!-- generated from nbs/index.ipynb by tools/readme.py: edit the notebook, not this file -->\n\n'
                      + to_markdown(json.loads(nb_path.read_text())))
    print(f'wrote {readme}')
