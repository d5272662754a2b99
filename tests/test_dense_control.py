"""The dense control of every run: the model after warm-up trained exactly as the run learned (checked by redoing it by
hand), reported in the log, the terminal and the report; off on request; stopped and resumed like the rest."""
import copy, json
import pytest, torch
from sentinel_nb.models import tiny_model
from sentinel_nb.cycle import run_plasticity, RunControl, seeded_loader
from sentinel_nb.train import FineTuner, drain
from sentinel_nb.metrics import evaluate
from sentinel_nb.log import load_checkpoint
from sentinel_nb.viz import against_control, metrics_table
from sentinel_nb.report import export_report
from tiny_data import tiny_data

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

DATA = tiny_data()
SMALL = dict(cycles=2, steps=5, warmup_max_steps=4, warmup_window=2, score_batches=1, eval_batches=2, ramp_steps=2,
             boost_steps=3, prune_level=0.25, grow_ratio=0.5, max_new_tokens=4, prompts=['a b'])
MODEL = tiny_model('gpt2', n_layer=2, n_head=4)                 # with dropout: the control must draw the same masks

def run(out=None, **kw):
    return run_plasticity(copy.deepcopy(MODEL), DATA, out=out, progress=False, **{**SMALL, **kw})

@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp('straight')
    return run(out), out

def test_the_control_is_the_dense_model_trained_as_the_run_learned(straight):
    log, out = straight
    ctl = log.filter('control')
    assert [e.cycle for e in ctl] == [1, 2] and [e.kind for e in log.events][-1] == 'end'
    model = copy.deepcopy(MODEL)
    load_checkpoint(out/'warmup', model)                        # the dense model after warm-up
    for e, learn in zip(ctl, log.filter('learn')):             # one FineTuner per cycle, the run's seed, steps, lr
        seed = SMALL.get('seed', 0) * 1000 + e.cycle + 3
        model.train()
        tuner = FineTuner(model, None, lr=1e-4, stability_level=1, seed=seed, warmup_steps=min(10, max(1, SMALL['steps'] // 5)))
        drain(tuner.train_steps(tuner.accelerator.prepare(seeded_loader(DATA['train'], seed)), learn.info['steps'])); tuner.close()
        ppl = evaluate(model, list(DATA['validation'])[:SMALL['eval_batches']])['perplexity']
        assert e.metrics_after['perplexity'] == pytest.approx(ppl, rel=1e-6), e.cycle
        assert e.info['steps'] == learn.info['steps'] and e.step == learn.step
    v = against_control(log)
    assert v['perplexity'] == log.filter('learn')[-1].metrics_after['perplexity']
    assert v['control_perplexity'] == ctl[-1].metrics_after['perplexity']
    assert v['perplexity_over_control'] == pytest.approx(v['perplexity'] / v['control_perplexity'])
    assert v['active_heads'] < v['heads'] == 8 and v['parameters_pruned'] < v['parameters_dense']
    assert v['speedup'] == pytest.approx(v['forward_ms_dense'] / v['forward_ms_pruned'])   # timed on the first validation batch
    assert v['timed_batch'] == list(next(iter(DATA['validation']))['input_ids'].shape)

def test_the_report_and_the_phase_table_show_it(straight, tmp_path):
    log, out = straight
    table = metrics_table(log)
    assert list(table.phase[-2:]) == ['cycle 1: dense control', 'cycle 2: dense control']
    page = export_report(out, tmp_path/'report.html', attention=False).read_text()
    v = against_control(log)
    assert 'Against the dense control' in page and f"{v['perplexity_over_control']:.3f}x" in page

def test_no_control_on_request_and_without_a_folder():
    assert not run(dense_control=False).filter('control')
    log = run()                                                # no run folder: the warm-up model is kept in memory
    assert [e.cycle for e in log.filter('control')] == [1, 2]

def test_a_stop_inside_the_control_resumes_into_the_same_control(straight, tmp_path):
    log, _ = straight
    ctl = RunControl(); seen = []
    def on_phase(name, cycle):
        seen.append((name, cycle))
        if (name, cycle) == ('control', 2): ctl.stop()
    stopped = run(tmp_path, control=ctl, on_phase=on_phase)
    assert stopped.filter('stop')[0].info['phase'] == 'control' and ('control', 1) in seen
    resumed = run(tmp_path, resume=True)
    a, b = log.filter('control'), resumed.filter('control')
    assert [e.cycle for e in b] == [1, 2]
    for x, y in zip(a, b): assert y.metrics_after['perplexity'] == pytest.approx(x.metrics_after['perplexity'], rel=1e-6)

def test_the_cli_prints_the_verdict(tmp_path, capsys):
    from sentinel_nb.cli import main
    args = ['run', '--model', 'sentinel-tiny', '--out', str(tmp_path/'run'), '--cycles', '1', '--steps', '2', '--warmup-max-steps', '0',
            '--block-size', '32', '--batch-size', '2', '--max-blocks', '8', '--eval-batches', '1', '--score-batches', '1',
            '--max-new-tokens', '2', '--no-report']
    assert main(args) == 0
    res, err = capsys.readouterr()
    assert 'for the dense model trained the same way' in err and json.loads(res)['against_control']['heads'] == 32
    assert main([*args[:4], str(tmp_path/'off'), *args[5:], '--no-dense-control']) == 0
    assert json.loads(capsys.readouterr()[0])['against_control'] is None
