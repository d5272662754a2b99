"The HTML report (sentinel_nb.report) of a small real run: self-contained, every event in it, generated text escaped, in a real browser."
import importlib.util, json, re, shutil
from html.parser import HTMLParser
from pathlib import Path
import pytest, torch
from plotly.offline import get_plotlyjs
from sentinel_nb.models import tiny_model, tiny_tokenizer
from sentinel_nb.data import load_corpus
from sentinel_nb.cycle import run_plasticity
from sentinel_nb.log import LogFileError
from sentinel_nb.report import export_report, generations_frame, esc, REPORT_NAME
from sentinel_nb.cli import main

CHROMIUM = Path('/usr/bin/chromium')
TINY_RUN = ['--cycles', '1', '--steps', '1', '--warmup-max-steps', '0', '--block-size', '32', '--batch-size', '2',
            '--max-blocks', '4', '--eval-batches', '1', '--score-batches', '1', '--max-new-tokens', '2', '--prompts', 'To be']
TABS = ['overview', 'timeline', 'heads', 'decisions', 'generations', 'attention', 'events', 'environment']
ATTACK = '<script>alert(1)</script>'

from tiny_data import tiny_data   # shared tiny loaders (tests/tiny_data.py)
from cli_stop import ctrl_c_at     # Ctrl-C inside a CLI run (tests/cli_stop.py)

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "The folder of a two-cycle run of a tiny GPT-2 (with samples), and its report."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    data = tiny_data()
    out = tmp_path_factory.mktemp('report')/'run'
    log = run_plasticity(tiny_model('gpt2', n_layer=2, n_head=4), data, tiny_tokenizer(), out=out, cycles=2, steps=3,
                         warmup_max_steps=2, warmup_window=2, score_batches=1, eval_batches=1, prune_level=0.25,
                         grow_ratio=0.5, max_new_tokens=4, prompts=['To be', 'My lord'], progress=False)
    torch.set_num_threads(n)
    # the run started from a model object: the Attention tab needs it (run.json records only its class)
    return log, out, export_report(out, out/REPORT_NAME, model=tiny_model('gpt2', n_layer=2, n_head=4), tokenizer=tiny_tokenizer())

class Fetches(HTMLParser):
    "What a browser would fetch: script src, link href, img / iframe / source src, and every css url( / @import."
    def __init__(self):
        super().__init__(); self.refs, self.scripts, self.css = [], [], []
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'script': self.scripts.append(a)
        for key in ('src', 'href', 'srcset', 'data', 'poster', 'action'):
            if a.get(key) is not None and not (tag == 'a' and a[key].startswith('#')): self.refs.append((tag, key, a[key]))
        if a.get('style'): self.css.append(a['style'])
        self._tag = tag
    def handle_data(self, data):
        if getattr(self, '_tag', None) == 'style': self.css.append(data)

def parse(page: str) -> Fetches:
    f = Fetches(); f.feed(page); return f

def test_nothing_to_fetch(run):
    _, _, report = run
    f = parse(report.read_text())
    assert f.refs == [], f.refs                                      # no src / href at all: nothing leaves the file
    assert all('src' not in s for s in f.scripts)
    css = '\n'.join(f.css)
    assert css and not re.search(r'url\s*\(|@import', css, re.I), css[:500]
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', report.read_text().replace(get_plotlyjs(), ''))

def test_plotly_js_once_and_every_tab(run):
    _, _, report = run
    page = report.read_text()
    assert page.count(get_plotlyjs()[:300]) == 1 and page.count('<script id="plotly-js">') == 1
    assert re.findall(r'<section class="tab" id="tab-(\w+)"', page) == TABS
    assert page.count('data-spec=') >= 4      # timeline, head map, history, and decisions
    assert 'mathjax' not in page.replace(get_plotlyjs(), '').lower()

def test_every_event_in_the_events_tab(run):
    log, _, report = run
    page = report.read_text()
    events = page[page.index('id="tab-events"'):page.index('id="tab-environment"')]
    rows = re.findall(r'<tr><td>(\d+)</td><td>(\w+)</td><td>(\d+)</td><td>(\d+)</td>', events)
    assert [(int(i), k, int(c), int(s)) for i, k, c, s in rows] == [(i, e.kind, e.cycle, e.step) for i, e in enumerate(log.events)]

def test_generations_side_by_side(run):
    log, _, report = run
    gens = generations_frame(log)
    sampled = [e for e in log.events if e.samples]
    assert len(sampled) >= 4 and gens.model.nunique() == len(sampled) and len(gens) == 2 * len(sampled)
    assert list(dict.fromkeys(gens.prompt)) == ['To be', 'My lord']
    table = report.read_text()
    table = table[table.index('id="tab-generations"'):table.index('id="tab-events"')]
    assert table.count('<tr>') == 1 + 2 and table.count('<th>') == 1 + len(sampled)   # a row per prompt, a column per phase
    page = report.read_text()

    for e in sampled:
        for s in e.samples: assert esc(s['text']) in page

def test_generated_html_stays_text(run, tmp_path):
    _, out, _ = run
    copy = tmp_path/'run'; shutil.copytree(out, copy)
    lines = (copy/'events.jsonl').read_text().splitlines()
    events = [json.loads(l) for l in lines]
    i = next(i for i, e in enumerate(events) if e['samples'])
    events[i]['samples'][0]['text'] = ATTACK
    events[i]['samples'][0]['prompt'] = '<img src=x onerror=alert(2)>'
    (copy/'events.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in events))
    page = export_report(copy, tmp_path/'r.html').read_text()
    assert ATTACK not in page and '&lt;script&gt;alert(1)&lt;/script&gt;' in page
    assert '<img' not in page.replace(get_plotlyjs(), '') and '&lt;img src=x onerror=alert(2)&gt;' in page

def test_missing_or_corrupt_log(run, tmp_path):
    _, out, _ = run
    with pytest.raises(FileNotFoundError, match='no-such-run'): export_report(tmp_path/'no-such-run', tmp_path/'r.html')
    empty = tmp_path/'empty'; empty.mkdir()
    with pytest.raises(LogFileError, match='neither events.jsonl nor log.json'): export_report(empty, tmp_path/'r.html')
    bad = tmp_path/'bad'; shutil.copytree(out, bad)
    (bad/'events.jsonl').write_text('{"kind": "start"\n')
    with pytest.raises(LogFileError, match=re.escape(str(bad/'events.jsonl'))): export_report(bad, tmp_path/'r.html')
    (bad/'events.jsonl').unlink(); (bad/'log.json').write_text('{"schema_version": 1, "events": [')
    with pytest.raises(LogFileError, match=re.escape(str(bad/'log.json'))): export_report(bad, tmp_path/'r.html')
    assert not (tmp_path/'r.html').exists()

@pytest.fixture(scope='module')
def text_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp('corpus')/'macbeth.txt'
    p.write_text(load_corpus('shakespeare')['validation']['text'][0][:30_000])
    return p

def test_cli_run_leaves_a_report_and_report_rewrites_it(capsys, tmp_path, text_file):
    out = tmp_path/'cli'
    assert main(['run', '--corpus', str(text_file), '--out', str(out), *TINY_RUN]) == 0
    res, err = capsys.readouterr()
    assert json.loads(res)['report'] == str(out/REPORT_NAME) and f"sentinel: report {out/REPORT_NAME}" in err.splitlines()
    page = (out/REPORT_NAME).read_text()
    assert 'sentinel-tiny' in page and 'attention not drawn' not in page          # run.json's model loads: attention drawn
    assert main(['report', str(out), '-o', str(tmp_path/'again.html'), '--title', 'A <b>title</b>']) == 0
    res, err = capsys.readouterr()
    assert json.loads(res)['bytes'] == (tmp_path/'again.html').stat().st_size and 'report written to' in err
    assert '<title>A &lt;b&gt;title&lt;/b&gt;</title>' in (tmp_path/'again.html').read_text()
    assert main(['report', str(out), '-o', str(tmp_path/'plain.html'), '--no-attention']) == 0
    assert 'not drawn (attention=False / --no-attention)' in (tmp_path/'plain.html').read_text(); capsys.readouterr()
    # --overwrite treats the old report as the run's own file
    assert main(['run', '--corpus', str(text_file), '--out', str(out), '--overwrite', '--no-report', *TINY_RUN]) == 0
    assert not (out/REPORT_NAME).exists()
    capsys.readouterr()
    assert main(['report', str(tmp_path/'nowhere')]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"sentinel: error: no run at {tmp_path/'nowhere'}: give a run folder "
                                                             "(the --out of `sentinel run`), its log.json or events.jsonl"]

@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f'{CHROMIUM} is missing (apt-get install chromium)')
@pytest.mark.skipif(importlib.util.find_spec('playwright') is None, reason='the playwright package is missing (pip install playwright; no browser download needed)')
def test_in_a_real_browser(run):
    from playwright.sync_api import sync_playwright
    _, _, report = run
    args = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
            '--no-first-run', '--disable-sync']
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport={'width': 1200, 'height': 800})
            errors, requests = [], []
            page.on('console', lambda m: errors.append(m.text) if m.type == 'error' else None)
            page.on('pageerror', lambda e: errors.append(str(e)))
            page.on('request', lambda r: requests.append(r.url))
            page.goto(report.resolve().as_uri())
            seen = {}
            for button in page.query_selector_all('nav button'):
                button.click()
                tab = button.get_attribute('data-tab')
                page.wait_for_function(f"Array.from(document.querySelectorAll('#tab-{tab} div.fig')).every(d => d.querySelector('.main-svg'))")
                assert page.is_visible(f'#tab-{tab}') and [t for t in TABS if page.is_visible(f'#tab-{t}')] == [tab]
                seen[tab] = page.evaluate(f"""Array.from(document.querySelectorAll('#tab-{tab} .js-plotly-plot')).map(d => {{
                    const r = d.querySelector('.main-svg').getBoundingClientRect(); return [r.width, r.height]; }})""")
                assert all(w > 300 and h > 100 for w, h in seen[tab]), (tab, seen[tab])
            assert list(seen) == TABS and len(seen['heads']) == 2 and len(seen['timeline']) == 1 and len(seen['decisions']) >= 4 and len(seen['attention']) == 4
            assert page.evaluate("document.body.innerText").count(ATTACK) == 0
            page.click('nav button[data-tab=generations]')
            assert page.is_visible('#tab-generations table.generations div.generation')
        finally: browser.close()
    assert errors == [], errors
    assert [u for u in requests if not u.startswith('file:')] == []

def test_a_stopped_then_resumed_run_reports_what_it_has(capsys, tmp_path, text_file, monkeypatch):
    import sentinel_nb.cycle as cycle
    real = ctrl_c_at(monkeypatch, 'learn 1', 1)
    out = tmp_path/'stopped'
    run = ['run', '--corpus', str(text_file), '--out', str(out), *TINY_RUN, '--steps', '3']
    assert main(run) == 130
    err = capsys.readouterr().err.splitlines()
    assert err[-2] == f"sentinel: report {out/REPORT_NAME}" and 'continue it with' in err[-1]   # the continue line stays last
    page = (out/REPORT_NAME).read_text()
    assert '<td>stop</td>' in page and 'stopped: ' in page and '<td>end</td>' not in page
    monkeypatch.setattr(cycle, 'run_plasticity', real)
    assert main(['run', '--out', str(out), '--resume']) == 0
    capsys.readouterr()
    page = (out/REPORT_NAME).read_text()
    assert all(f'<td>{k}</td>' in page for k in ('stop', 'resume', 'end')) and '<td>finished</td>' in page
