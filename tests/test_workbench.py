"The widget panel driven from Python (no browser): the cooperative driver on an event loop, Pause, Step, Stop, resume, errors."
import asyncio, html, time
from pathlib import Path
import pytest, torch
from sentinel_nb.workbench import Workbench, SETTINGS, _argv
from sentinel_nb.cli import run_args, prepare_run

SMALL = dict(block_size=32, batch_size=4, max_blocks=48, cycles=2, steps=4, warmup_max_steps=3, eval_batches=2, max_new_tokens=8)

@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    "The log of an uninterrupted panel run, driven synchronously (one torch thread, as every test here: the same sums)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try: wb = Workbench(out=str(tmp_path_factory.mktemp('wb')/'straight'), **SMALL).run()
    finally: torch.set_num_threads(n)
    assert wb.state == 'finished'
    assert 'for the dense model trained the same way' in wb.message.value      # the verdict against the dense control
    return wb.log

def learn_losses(log): return [e.info['losses'] for e in log.filter('learn')]

async def until(cond, timeout=120):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, 'timed out'
        await asyncio.sleep(0.01)

def test_the_driver_leaves_the_event_loop_free_between_steps(tmp_path, straight):
    "As in a kernel: Run starts a task; pause / stop / run are called from the loop (as clicks are) while it trains."
    wb = Workbench(out=str(tmp_path/'run'), **SMALL)
    timing = {}
    async def scenario():
        ticks = []
        async def clock():                       # another task on the same loop: it must keep running during the run
            while wb.state not in ('finished', 'failed'): ticks.append(time.monotonic()); await asyncio.sleep(0.05)
        other = asyncio.get_running_loop().create_task(clock())
        wb.run()
        assert wb._task is not None and wb.state == 'running'          # not blocking: we are back at once
        await until(lambda: wb.runner.global_step >= 2)
        wb.pause(); at = wb.runner.global_step
        await asyncio.sleep(0.6)
        assert wb.runner.global_step == at and wb.state == 'paused'    # nothing moves while paused
        timing['first'], timing['draws'] = wb.first_update_s, list(wb.redraws)   # (a resume starts these afresh)
        wb.run()                                                        # the Run button: go on
        await until(lambda: wb.runner.global_step >= 5)                 # inside learn 1
        wb.stop()
        await until(lambda: wb.state == 'stopped')
        assert (tmp_path/'run'/'stopped'/'model.safetensors').is_file()
        wb.run()                                                        # resumes from the checkpoint
        await until(lambda: wb.state == 'finished')
        await other
        return ticks
    ticks = asyncio.run(scenario())
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) > 20 and max(gaps) < 5, (len(ticks), max(gaps))  # the loop was served all along (a step is < 1 s here)
    assert learn_losses(wb.log) == learn_losses(straight)               # paused, stopped, resumed: the same run
    assert [e.head_state['active'] for e in wb.log.filter('learn')] == [e.head_state['active'] for e in straight.filter('learn')]
    kinds = [e.kind for e in wb.log.events]
    assert 'stop' in kinds and 'resume' in kinds and kinds[-1] == 'end'
    draws = timing['draws']
    assert timing['first'] is not None and len(draws) >= 2, timing
    assert all(b - a >= wb.refresh_every * 0.99 for a, b in zip(draws[:-1], draws[1:-1])), 'redrawn faster than refresh_every'

def test_step_runs_exactly_one_phase(tmp_path):
    wb = Workbench(out=str(tmp_path/'run'), **SMALL)
    wb._on_step()                                           # a fresh panel: the warm-up, then paused
    seen = [wb.phase]
    for _ in range(6):
        n_events = len(wb.log.events); wb._on_step(); seen.append(wb.phase)
        assert wb.state == 'paused'
    assert seen == [('score', 1), ('prune', 1), ('measure', 1), ('grow', 1), ('learn', 1), ('score', 2), ('prune', 2)]
    assert [e.kind for e in wb.log.filter('learn')] == ['learn'] and not wb.log.filter('prune', 2)
    wb.stop(); wb.run()
    assert wb.state == 'stopped'

@pytest.mark.parametrize('change, fragment', [
    ({'prune_level': 1.5}, 'prune_level must be'),
    ({'steps': -1}, 'steps must be'),
    ({'block_size': 0}, 'block_size must be'),
    ({'corpus': '/no/such/corpus.txt'}, '/no/such/corpus.txt'),
    ({'device': 'cuda'} if not torch.cuda.is_available() else {'lr': -1.0}, 'cuda' if not torch.cuda.is_available() else 'lr must be'),
])
def test_bad_settings_are_refused_with_the_apis_message(tmp_path, change, fragment):
    out = tmp_path/'run'
    wb = Workbench(out=str(out), **{**SMALL, **change})
    wb._on_run()
    assert wb.state == 'idle' and wb._gen is None and not out.exists()
    with pytest.raises(Exception) as api:                  # the command line's own check, on the same settings
        prepare_run(run_args(_argv(wb.settings(), 'new', wb.extra)))
    shown = html.unescape(wb.message.value)
    assert fragment in shown and ' '.join(str(api.value).split()) in shown, (shown, api.value)

def test_a_folder_that_holds_a_run_needs_resume_or_overwrite(tmp_path, straight):
    folder = Path(straight.events_path).parent
    wb = Workbench(out=str(folder), **SMALL)
    wb._on_run()
    assert wb.state == 'idle' and 'resume' in wb.message.value and 'overwrite' in wb.message.value

def test_open_a_finished_run_then_run_more_cycles(tmp_path):
    first = Workbench(out=str(tmp_path/'run'), **{**SMALL, 'cycles': 1}).run()
    assert first.state == 'finished'
    wb = Workbench.open(tmp_path/'run', eval_batches=2, max_new_tokens=8)
    assert wb.state == 'opened' and wb.settings()['cycles'] == 1 and {'timeline', 'heads', 'scores'} <= set(wb.figures)
    assert wb.run_button.disabled is False and wb.stop_button.disabled is True
    wb.controls['cycles'].value = 2
    wb.run()
    assert wb.state == 'finished' and [e.cycle for e in wb.log.filter('learn')] == [1, 2]

def test_buttons_follow_the_state(tmp_path):
    wb = Workbench(out=str(tmp_path/'run'), **SMALL)
    assert (wb.run_button.disabled, wb.pause_button.disabled, wb.stop_button.disabled) == (False, True, True)
    wb.start()
    assert (wb.run_button.disabled, wb.pause_button.disabled, wb.stop_button.disabled) == (True, False, False)
    assert all(w.disabled for w in wb.controls.values())              # no setting changes under a running run
    wb.pause()
    assert (wb.run_button.disabled, wb.pause_button.disabled, wb.step_button.disabled) == (False, True, False)
    wb.stop(); wb.run()
    assert wb.state == 'stopped' and not any(w.disabled for w in wb.controls.values())
    assert 'step <span class="sentinel-step-count">' in wb.status.value
