"Stop anywhere, resume, same run: RunControl and Ctrl-C stops inside warm-up and learning, the run folder, events on disk."
import copy, json, os, shutil, signal
import pytest, torch
from torch.utils.data import DataLoader
from sentinel_nb.models import tiny_model, TINY_VOCAB
from sentinel_nb.data import collate_blocks
from sentinel_nb.log import ExperimentLog, RunFolderError, CheckpointError, latest_checkpoint, read_run_info
from sentinel_nb.cycle import run_plasticity, RunControl, INTERRUPTED, TRAINER_FILE

@pytest.fixture(autouse=True, scope='module')   # module scope: set before the module-scoped `straight` run too
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

from tiny_data import blocks, tiny_data as make_data   # shared tiny loaders (tests/tiny_data.py)

DATA = make_data()
SMALL = dict(cycles=2, steps=6, warmup_max_steps=6, warmup_window=2, score_batches=1, eval_batches=1, ramp_steps=2,
             boost_steps=3, prune_level=0.25, grow_ratio=0.5)
MODEL = tiny_model('gpt2', n_layer=2, n_head=4)
assert MODEL.config.resid_pdrop > 0 and MODEL.config.attn_pdrop > 0   # dropout: a resume must restore the random state

def run(out=None, model=None, **kw):
    return run_plasticity(copy.deepcopy(model or MODEL), kw.pop('data', DATA), out=out, progress=False, **{**SMALL, **kw})

@pytest.fixture(scope='module')
def straight(tmp_path_factory):
    "The uninterrupted two-cycle run every stopped-and-resumed run must reproduce."
    return run(tmp_path_factory.mktemp('straight'))

def assert_same_run(a: ExperimentLog, b: ExperimentLog):
    for kind in ('warmup', 'prune', 'grow', 'learn'):
        ea, eb = a.filter(kind), b.filter(kind)
        assert len(ea) == len(eb) > 0, kind
        for x, y in zip(ea, eb):
            dx, dy = x.to_dict(), y.to_dict()                            # JSON-ready: a loaded log has lists, not tuples
            assert [dx[f] for f in ('cycle', 'step', 'heads', 'head_state')] == [dy[f] for f in ('cycle', 'step', 'heads', 'head_state')], kind
            for k, v in x.metrics_after.items(): assert y.metrics_after[k] == pytest.approx(v, rel=1e-6), (kind, x.cycle, k)
            if 'losses' in x.info: assert y.info['losses'] == pytest.approx(x.info['losses'], rel=1e-6), (kind, x.cycle)

def phase_start(log, kind, cycle):
    "Global step at which the training phase `kind` of `cycle` starts."
    return log.filter(kind, cycle)[0].step - log.filter(kind, cycle)[0].info['steps']

def stopper(at_step: int, ctl: RunControl):
    def on_step(rec):
        if rec['global_step'] == at_step: ctl.stop()
    return on_step

@pytest.mark.parametrize('kind,cycle,k', [('warmup', 0, 2), ('learn', 1, 3), ('learn', 2, 1)])
def test_stop_inside_a_phase_then_resume_gives_the_same_run(tmp_path, straight, kind, cycle, k):
    at = phase_start(straight, kind, cycle) + k
    ctl = RunControl()
    stopped = run(tmp_path, control=ctl, on_step=stopper(at, ctl))
    assert [e.kind for e in stopped.events[-2:]] == ['stop', 'checkpoint']
    stop = stopped.filter('stop')[0]
    assert (stop.step, stop.cycle, stop.info['phase'], stop.info['reason']) == (at, cycle, kind, 'stopped by the user')
    assert not stopped.filter(kind, cycle)                           # the short phase is not logged as complete
    assert (tmp_path/'stopped'/TRAINER_FILE).exists() and latest_checkpoint(tmp_path) == tmp_path/'stopped'
    extra = json.loads((tmp_path/'stopped'/'extra.json').read_text())
    assert extra['position']['progress']['steps_done'] == k and extra['global_step'] == at
    resumed = run(tmp_path, resume=True)
    assert resumed.filter('resume')[0].info['phase'] == kind
    assert_same_run(straight, resumed)

def test_a_checkpoint_inside_a_phase_is_one_atomic_checkpoint(tmp_path):
    ctl = RunControl()
    run(tmp_path, control=ctl, on_step=stopper(8, ctl))
    extra = json.loads((tmp_path/'stopped'/'extra.json').read_text())
    assert TRAINER_FILE in extra['checkpoint_files']                 # its size is recorded with the others
    trainer = tmp_path/'stopped'/TRAINER_FILE
    trainer.write_bytes(trainer.read_bytes()[:-10])                   # damaged: refused, naming the file
    with pytest.raises(CheckpointError, match=TRAINER_FILE): run(tmp_path, resume=tmp_path/'stopped')
    assert latest_checkpoint(tmp_path) == tmp_path/'warmup'           # resume=True would take the newest good one
    run(tmp_path, overwrite=True, cycles=1)                           # --overwrite deletes it like any checkpoint
    assert not (tmp_path/'stopped').exists()

def test_stop_asked_before_learning_stops_at_step_zero_of_learn(tmp_path, straight):
    ctl = RunControl()
    log = run(tmp_path, control=ctl, on_phase=lambda p, c: ctl.stop() if (p, c) == ('grow', 1) else None)
    stop = log.filter('stop')[0]
    assert stop.info['phase'] == 'learn' and stop.step == phase_start(straight, 'learn', 1) and log.filter('grow', 1)
    assert_same_run(straight, run(None, resume=tmp_path))            # a run folder as resume=: its newest checkpoint

def test_ctrl_c_is_a_stop_with_a_checkpoint(tmp_path, straight):
    before = signal.getsignal(signal.SIGINT)
    at = phase_start(straight, 'learn', 1) + 2
    def on_step(rec):
        if rec['global_step'] == at: os.kill(os.getpid(), signal.SIGINT)
    log = run(tmp_path, on_step=on_step)
    assert signal.getsignal(signal.SIGINT) is before                 # the previous handler is back
    stop = log.filter('stop')[0]
    assert (stop.info['reason'], stop.step) == (INTERRUPTED, at) and (tmp_path/'stopped'/TRAINER_FILE).exists()
    assert_same_run(straight, run(tmp_path, resume=True))

def test_second_ctrl_c_aborts(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    def on_step(rec):
        if rec['global_step'] == 2:
            os.kill(os.getpid(), signal.SIGINT)                       # the first press asks for a stop...
            os.kill(os.getpid(), signal.SIGINT)                       # ...a second one, before it happens, aborts
    with pytest.raises(KeyboardInterrupt): run(tmp_path, on_step=on_step)
    assert signal.getsignal(signal.SIGINT) is before

def test_warmup_checkpoint_survives_a_crash_in_cycle_1(tmp_path, straight):
    def crash(rec):
        if rec['phase'] == 'learn 1': raise RuntimeError('killed')
    with pytest.raises(RuntimeError, match='killed'): run(tmp_path, on_step=crash)
    assert latest_checkpoint(tmp_path) == tmp_path/'warmup'
    on_disk = ExperimentLog.read_events(tmp_path/'events.jsonl')
    assert [e.kind for e in on_disk][-3:] == ['prune', 'measure', 'grow']   # events of the lost cycle reached the disk
    resumed = run(tmp_path, resume=True)
    assert_same_run(straight, resumed)
    # the events file was rewritten from the checkpoint: the crashed cycle's events are gone, the resumed run's follow
    on_disk = ExperimentLog.read_events(tmp_path/'events.jsonl')
    assert [e.to_dict() for e in on_disk] == [e.to_dict() for e in resumed.events]
    assert len([e for e in on_disk if e.kind == 'prune' and e.cycle == 1]) == 1
    assert json.loads((tmp_path/'log.json').read_text())['events'] == [e.to_dict() for e in resumed.events]

def test_on_event_sees_every_event_in_the_events_file(tmp_path):
    seen = []
    def on_event(e):
        on_disk = ExperimentLog.read_events(tmp_path/'events.jsonl')
        seen.append(len(on_disk) == len(seen) + 1 and on_disk[-1].to_dict() == e.to_dict())
    log = run(tmp_path, on_event=on_event, cycles=1)
    assert len(seen) == len(log.events) and all(seen)

def test_run_folder_contract(tmp_path):
    out = tmp_path/'run'
    with pytest.raises(RunFolderError, match="got ''"): run('')
    with pytest.raises(RunFolderError, match='resume and overwrite'): run(out, resume=True, overwrite=True)
    with pytest.raises(RunFolderError, match='give out='): run(None, resume=True)
    log = run(out, cycles=1, run_info={'model': 'tiny-gpt2', 'corpus': 'random', 'data': {'block_size': 16}})
    info = read_run_info(out)
    assert info['model']['name'] == 'tiny-gpt2' and info['corpus'] == 'random' and info['config']['cycles'] == 1
    assert info['data']['block_size'] == 16 and info['data']['fingerprint']['train'] == {
        'blocks': 32, 'block_size': 16, 'batch_size': 4, 'tokens_sha256': info['data']['fingerprint']['train']['tokens_sha256']}
    rid = info['run_id']
    assert {json.loads((out/c/'extra.json').read_text())['run_id'] for c in ('warmup', 'cycle-1')} == {rid}
    assert log.run_id == rid
    with pytest.raises(RunFolderError, match='not empty'): run(out, cycles=1)       # a new run never lands on an old one
    run(out, cycles=1, overwrite=True)
    assert read_run_info(out)['run_id'] != rid                                       # overwrite: a new run

def test_resume_with_other_data_or_settings_is_refused_before_any_work(tmp_path):
    run(tmp_path, cycles=1, run_info={'model': 'tiny-gpt2'})
    events, model = (tmp_path/'events.jsonl').read_text(), copy.deepcopy(MODEL)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    cases = [(dict(data=make_data(train_seed=5)), 'data.fingerprint.train.tokens_sha256'),
             (dict(data=make_data(batch_size=8)), 'data.fingerprint.train.batch_size: 4 -> 8'),
             (dict(data=make_data(length=12)), 'data.fingerprint.train.block_size: 16 -> 12'),
             (dict(prune_level=0.5), 'config.prune_level: 0.25 -> 0.5'),
             (dict(run_info={'model': 'other'}), 'model.name: "tiny-gpt2" -> "other"')]
    for kw, diff in cases:
        kw.setdefault('run_info', {'model': 'tiny-gpt2'})
        with pytest.raises(RunFolderError, match='only cycles may change') as e:
            run_plasticity(model, kw.pop('data', DATA), out=tmp_path, resume=True, progress=False, **{**SMALL, 'cycles': 1, **kw})
        assert diff in str(e.value), (diff, str(e.value))
    assert all(torch.equal(v, w0[k]) for k, v in model.state_dict().items())     # the model was not touched
    assert (tmp_path/'events.jsonl').read_text() == events                         # nor the run folder

def test_a_finished_run_extended_by_a_cycle_equals_the_longer_run(tmp_path, straight):
    one = run(tmp_path, cycles=1)
    assert one.events[-1].kind == 'end'
    two = run(tmp_path, resume=True, cycles=2)
    assert read_run_info(tmp_path)['config']['cycles'] == 2
    assert_same_run(straight, two)

def test_resume_from_a_checkpoint_folder_of_another_run_folder(tmp_path, straight):
    run(tmp_path/'a', cycles=1)
    forked = run(tmp_path/'b', resume=tmp_path/'a'/'cycle-1', cycles=2)             # continue a's cycle 1 in b
    assert_same_run(straight, forked)
    assert read_run_info(tmp_path/'b')['run_id'] == read_run_info(tmp_path/'a')['run_id']
    assert (tmp_path/'b'/'cycle-2').exists() and not (tmp_path/'a'/'cycle-2').exists()

def test_no_out_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    log = run(None, cycles=1)
    assert log.events[-1].kind == 'end' and list(tmp_path.iterdir()) == []

def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    run(tmp_path/'a', cycles=1); run(tmp_path/'b', cycles=1)
    shutil.rmtree(tmp_path/'b'/'cycle-1'); shutil.copytree(tmp_path/'a'/'cycle-1', tmp_path/'b'/'cycle-1')   # a's, in b
    with pytest.raises(CheckpointError, match='belongs to run'): run(tmp_path/'b', resume=tmp_path/'b'/'cycle-1', cycles=1)

def test_distill_run_resumes_to_the_same_result(tmp_path):
    kw = dict(distill=True, cycles=2)
    straight = run(tmp_path/'a', **kw)
    ctl = RunControl()
    run(tmp_path/'b', control=ctl, on_step=stopper(phase_start(straight, 'learn', 2) + 2, ctl), **kw)
    assert_same_run(straight, run(tmp_path/'b', resume=True, **kw))   # the teacher comes back from the warm-up checkpoint
    # continued in another folder, stopped there, resumed there: the warm-up checkpoint (the teacher) came along
    ctl = RunControl()
    run(tmp_path/'c', resume=tmp_path/'a'/'cycle-1', control=ctl, on_step=stopper(phase_start(straight, 'learn', 2) + 1, ctl), **kw)
    assert (tmp_path/'c'/'warmup').is_dir() and (tmp_path/'c'/'stopped').is_dir()
    assert_same_run(straight, run(tmp_path/'c', resume=True, **kw))

PATIENT = dict(patience=2, eval_every=2, steps=16, lr=1e-3)   # cycle 1 improves to the end, cycle 2 stops early at its 4th step

@pytest.fixture(scope='module')
def patient_straight(tmp_path_factory):
    "An uninterrupted run with early stopping (thread count 1, as every run it is compared with)."
    return run(tmp_path_factory.mktemp('patient'), **PATIENT)

@pytest.mark.parametrize('cycle,k', [(1, 5), (2, 1), (2, 3)])
def test_stop_inside_learn_with_patience_then_resume_gives_the_same_run(tmp_path, patient_straight, cycle, k):
    learn2 = patient_straight.filter('learn', 2)[0]
    assert learn2.info['stopped_by'] == 'early_stop' and learn2.info['steps'] == 4   # the restore of the best weights is exercised
    at = phase_start(patient_straight, 'learn', cycle) + k
    ctl = RunControl()
    stopped = run(tmp_path, control=ctl, on_step=stopper(at, ctl), **PATIENT)
    assert stopped.filter('stop')[0].step == at and not stopped.filter('learn', cycle)
    resumed = run(tmp_path, resume=True, **PATIENT)
    assert_same_run(patient_straight, resumed)
    for a, b in zip(patient_straight.filter('learn'), resumed.filter('learn')):
        # no second start evaluation after the resume, and the same early stop at the same step
        assert [e['step'] for e in b.info['evals']] == [e['step'] for e in a.info['evals']] and b.info['stopped_by'] == a.info['stopped_by']
        assert [e['perplexity'] for e in b.info['evals']] == pytest.approx([e['perplexity'] for e in a.info['evals']], rel=1e-6)

def test_the_data_fingerprint_sees_an_edit_anywhere():
    "Every block is hashed: an edit of one block in the middle, same length, is another data set."
    from sentinel_nb.cycle import data_fingerprint
    edited = blocks(32, 0); edited[13]['input_ids'][5] = (edited[13]['input_ids'][5] % (TINY_VOCAB - 1)) + 1
    other = {'train': DataLoader(edited, batch_size=4, collate_fn=collate_blocks), 'validation': DATA['validation']}
    assert data_fingerprint(other)['train']['tokens_sha256'] != data_fingerprint(DATA)['train']['tokens_sha256']
    assert data_fingerprint(other)['validation'] == data_fingerprint(DATA)['validation']
