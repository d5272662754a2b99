"""One writer per run folder (issue 18): two real `sentinel run` processes, two runners in one process, a lock left by a
killed process; checksums that catch one flipped bit; a damaged newest checkpoint passed over with the reason; a lost
run.json rebuilt from the checkpoints instead of advice to delete them."""
import copy, json, os, signal, subprocess, sys, time, warnings
from pathlib import Path
import pytest, torch
from sentinel_nb.models import tiny_model
from sentinel_nb.log import (LOCK_FILE, RunFolderBusy, RunLock, CheckpointError, RunFolderError, ExperimentLog,
                             load_checkpoint, read_run_info, resumable_checkpoint)
from sentinel_nb.cycle import run_plasticity, PlasticityRunner, PlasticityConfig
from tiny_data import tiny_data as make_data

DATA = make_data()
SMALL = dict(cycles=1, steps=2, warmup_max_steps=2, warmup_window=2, score_batches=1, eval_batches=1, ramp_steps=1,
             boost_steps=1, prune_level=0.25, dense_control=False)
MODEL = tiny_model('gpt2', n_layer=2, n_head=4)

def run(out, **kw): return run_plasticity(copy.deepcopy(MODEL), DATA, out=out, progress=False, **{**SMALL, **kw})

# a process that holds the lock of its run folder until it is killed: a real second writer
HOLDER = r'''
import sys, time
from sentinel_nb.log import RunLock
lock = RunLock(sys.argv[1], 'sentinel run --out held (test holder)').acquire()
print('held', flush=True); time.sleep(120)
'''

def holder(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, '-c', HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == 'held'
    return p

def test_a_second_process_is_refused_before_any_work_and_a_dead_holders_lock_is_taken_over(tmp_path):
    out = tmp_path/'run'
    first = run(out)                                               # a finished run: resume with more cycles writes again
    before = {p: p.stat().st_mtime_ns for p in out.rglob('*')}
    p = holder(out)
    try:
        with pytest.raises(RunFolderBusy) as e: run(out, resume=True, cycles=2)
        msg = str(e.value)
        assert f'process {p.pid}' in msg and 'test holder' in msg and 'another folder' in msg, msg
        assert {q: q.stat().st_mtime_ns for q in out.rglob('*') if q.name != LOCK_FILE} == before   # nothing written
        assert len(ExperimentLog.read_events(out/'events.jsonl')) == len(first.events)
    finally:
        p.send_signal(signal.SIGKILL); p.wait()
    # the holder died without letting go: its record is still in the file, its lock is not
    assert json.loads((out/LOCK_FILE).read_text())['pid'] == p.pid
    with pytest.warns(UserWarning, match=f'left by process {p.pid}'):
        log = run(out, resume=True, cycles=2)
    assert log.filter('end') and not (out/LOCK_FILE).exists()
    assert read_run_info(out)['config']['cycles'] == 2

def test_two_cli_runs_at_once_one_is_refused_and_the_folder_holds_one_run(tmp_path):
    "A second `sentinel run --resume` while a first one writes the folder: exit 2 naming the holder, nothing of it written."
    out = tmp_path/'run'
    flags = ['--model', 'sentinel-tiny', '--corpus', 'shakespeare', '--steps', '2', '--warmup-max-steps', '0',
             '--block-size', '32', '--batch-size', '2', '--max-blocks', '8', '--eval-batches', '1', '--score-batches', '1',
             '--max-new-tokens', '2', '--prompts', 'To be', '--no-report', '--no-dense-control']
    cmd = [sys.executable, '-c', 'import sys; from sentinel_nb.cli import main; sys.exit(main(sys.argv[1:]))']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    first = subprocess.run(cmd + ['run', '--out', str(out), '--cycles', '1', *flags], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    # the first writer: many cycles, so that it still writes when the second one asks (it is stopped with Ctrl-C below)
    a = subprocess.Popen(cmd + ['run', '--out', str(out), '--resume', '--cycles', '200'], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not (out/LOCK_FILE).exists():
            assert a.poll() is None and time.monotonic() - t0 < 300, a.stderr.read() if a.poll() is not None else 'no lock after 300 s'
            time.sleep(0.1)
        b = subprocess.run(cmd + ['run', '--out', str(out), '--resume', '--cycles', '2'], env=env, capture_output=True, text=True, timeout=300)
        assert b.returncode == 2, b.stderr
        assert f'is being written by process {a.pid}' in b.stderr and 'sentinel: error:' in b.stderr, b.stderr
        assert a.poll() is None                                      # the first one was writing all along
    finally:
        a.send_signal(signal.SIGINT)                                 # Ctrl-C: it stops with a checkpoint
        rc_a = a.wait(timeout=300)
    assert rc_a == 130, a.stderr.read()
    events = ExperimentLog.read_events(out/'events.jsonl')
    assert [e.kind for e in events].count('resume') == 1 and events[-1].kind in ('stop', 'checkpoint')   # one writer's events
    assert read_run_info(out)['config']['cycles'] == 200 and not (out/LOCK_FILE).exists()

def test_two_runners_in_one_process_and_the_lock_follows_the_run(tmp_path):
    out = tmp_path/'run'
    a = PlasticityRunner(copy.deepcopy(MODEL), DATA, config=PlasticityConfig(**SMALL), progress=False).open(out)
    b = PlasticityRunner(copy.deepcopy(MODEL), DATA, config=PlasticityConfig(**SMALL), progress=False)
    with pytest.raises(RunFolderBusy, match='this process'): b.open(out, resume=True)
    gen = a.steps(); next(gen)                                     # running: still held
    assert a.lock.held
    gen.close()                                                    # a generator dropped unfinished (a re-run cell) lets go
    assert not a.lock.held and not (out/LOCK_FILE).exists()
    b.release(); a.release()

def test_a_flipped_bit_is_found_and_resume_says_which_checkpoint_it_takes_and_why(tmp_path):
    out = tmp_path/'run'
    run(out, cycles=2)
    weights = out/'cycle-2'/'model.safetensors'
    raw = bytearray(weights.read_bytes()); raw[-3] ^= 0x01; weights.write_bytes(bytes(raw))      # one bit, same size
    with pytest.raises(CheckpointError, match='sha256'): load_checkpoint(out/'cycle-2', copy.deepcopy(MODEL))
    folder, passed = resumable_checkpoint(out)
    assert folder.name == 'cycle-1' and passed and passed[0].startswith('cycle-2') and 'sha256' in passed[0]
    truncated = out/'cycle-1'/'head_state.json'; truncated.write_text(truncated.read_text()[:-10])
    folder, passed = resumable_checkpoint(out)
    assert folder.name == 'warmup' and any(p.startswith('cycle-1') and 'bytes' in p for p in passed), passed
    with pytest.warns(UserWarning, match=r'resuming from warmup, not from cycle-1 .*cycle-2'):
        log = run(out, resume=True, cycles=2)
    assert log.filter('resume')[0].info['folder'].endswith('warmup') and log.filter('end')

def test_a_lost_run_json_is_rebuilt_from_the_checkpoints(tmp_path):
    out = tmp_path/'run'
    straight = run(out, cycles=2)
    (out/'cycle-2').rename(tmp_path/'aside')                       # resume has work left: cycle 2
    lost = read_run_info(out); run_id = lost['run_id']
    (out/'run.json').unlink()
    with pytest.raises(RunFolderError) as e: read_run_info(out)
    assert 'intact' in str(e.value) and '--overwrite' not in str(e.value)   # never advise deleting checkpoints
    with pytest.warns(UserWarning, match='run.json was missing: rebuilt from'):
        log = run(out, resume=True, cycles=2)
    assert read_run_info(out)['run_id'] == run_id and log.filter('end')
    assert read_run_info(out)['data'] == lost['data'] and read_run_info(out)['model'] == lost['model']   # the checkpoint's copy
    assert [list(map(list, e.heads)) for e in log.filter('prune')] == [list(map(list, e.heads)) for e in straight.filter('prune')]
    # other settings than the checkpoint's are still refused, listed
    (out/'run.json').unlink()
    with pytest.raises(RunFolderError, match='config.lr'): run(out, resume=True, cycles=3, lr=1.0)

def test_two_panels_on_one_folder_one_drives_it(tmp_path):
    "A second panel, and `Workbench.open` of the folder a panel is running, are refused while it runs; free once it ends."
    from sentinel_nb.workbench import Workbench
    out = str(tmp_path/'wb')
    small = dict(block_size=32, batch_size=4, max_blocks=24, cycles=1, steps=2, warmup_max_steps=2, eval_batches=1, max_new_tokens=2)
    a = Workbench(out=out, **small)
    a.start(); a.advance()                                        # running, one step in
    b = Workbench(out=out, **{**small, 'folder': 'resume'})
    with pytest.raises(RunFolderBusy, match=r'this process .*a workbench panel \(sentinel-tiny on shakespeare\)'): b.start()
    assert b.state == 'idle'
    b._on_run()                                                   # a click on Run: the panel says why, no traceback
    assert 'being written by this process' in b.message.value and b.state == 'idle'
    a.run(block=True)
    assert a.state == 'finished' and not (Path(out)/LOCK_FILE).exists()
    ends = [e.kind for e in ExperimentLog.read_events(Path(out)/'events.jsonl')].count('end')
    opened = Workbench.open(out, cycles=2)                        # reading needs no lock; driving it takes the lock again
    opened.run(block=True)
    assert opened.state == 'finished' and opened.log.filter('end')[-1].cycle == 2 and ends == 1

def test_panel_settings_a_widget_cannot_hold_are_named():
    from sentinel_nb.workbench import Workbench
    with pytest.raises(ValueError, match=r"cycles='three' .* give a whole number"): Workbench(cycles='three')
    with pytest.raises(ValueError, match=r"folder='bogus' .* one of 'new', 'resume', 'overwrite'"): Workbench(folder='bogus')

def test_resume_with_fewer_cycles_than_begun_is_refused_in_python_too(tmp_path):
    out = tmp_path/'run'; run(out, cycles=2)
    before = {p: p.stat().st_mtime_ns for p in out.rglob('*')}
    with pytest.raises(RunFolderError, match='cycles=1 is fewer than the 2 cycles'): run(out, resume=True, cycles=1)
    assert {p: p.stat().st_mtime_ns for p in out.rglob('*')} == before and not (out/LOCK_FILE).exists()
