"Project-level checks: CI runs the README's test command, the Quarto configs agree, the docs pre-processing works."
import configparser, re, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent

def readme_commands():
    block = re.search(r"```sh\n(.*?)```", (ROOT/'README.md').read_text(), re.S).group(1)
    return [l.split('#')[0].strip() for l in block.splitlines() if l.split('#')[0].strip()]

def test_readme_has_exactly_two_commands_and_ci_runs_the_test_one():
    cmds = readme_commands()
    assert cmds == ['bash tools/demo.sh', 'bash tools/test.sh'], cmds
    ci = [l.strip() for l in (ROOT/'.ci'/'run').read_text().splitlines() if l.strip() and not l.startswith('#')]
    assert cmds[1] in ci, ci

def test_quarto_configs_identical():
    assert (ROOT/'_quarto.yml').read_text() == (ROOT/'nbs'/'_quarto.yml').read_text()

def test_settings_declare_dependencies():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(ROOT/'settings.ini')
    names = {re.split(r'[<>=!~ ]', r)[0] for r in cfg['DEFAULT']['requirements'].split()}
    need = {'torch', 'transformers', 'datasets', 'accelerate', 'safetensors', 'gguf', 'ipywidgets', 'plotly',
            'anywidget', 'pandas', 'jupyterlab', 'nbdev'}
    assert need <= names, need - names
    assert 'nbdev>=2.4.14,<3' in cfg['DEFAULT']['requirements']

def test_docs_preprocessing(tmp_path):
    "Everything nbdev_docs does before handing over to Quarto: quarto yml, sidebar, processed notebooks."
    code = ("from nbdev.quarto import refresh_quarto_yml, nbdev_sidebar; from nbdev.serve import proc_nbs; "
            "import nbdev.doclinks; refresh_quarto_yml(); nbdev.doclinks._build_modidx(); "
            "nbdev_sidebar.__wrapped__(); c = proc_nbs(n_workers=1); print(c)")
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Found cells containing imports and other code' not in r.stderr, r.stderr[-3000:]
    proc = ROOT/'_proc'
    nbs = {p.name for p in (ROOT/'nbs').glob('*.ipynb')}
    assert nbs <= {p.name for p in proc.glob('*.ipynb')}, nbs
    assert (proc/'_quarto.yml').exists() and (proc/'sidebar.yml').exists()
