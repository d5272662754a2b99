"Run folders and checkpoints: refusals change nothing, saves are atomic, loads check every file before touching the model."
import errno, hashlib, json, os, shutil
from pathlib import Path
import pytest, torch
from safetensors import safe_open
from safetensors.torch import save_file, save_model
import sentinel_nb.log as logmod
from sentinel_nb.models import tiny_model, TINY_VOCAB
from sentinel_nb.gates import HeadGates
from sentinel_nb.log import (CheckpointError, RunFolderError, LogFileError, Event, ExperimentLog, new_run_id, prepare_run_folder,
                             write_run_info, read_run_info, run_info_differences, latest_checkpoint, save_checkpoint, load_checkpoint)

@pytest.fixture(autouse=True, scope='module')
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1); yield; torch.set_num_threads(n)

IDS = torch.randint(1, TINY_VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))   # [batch, pos]
RUN_A, RUN_B = new_run_id(), new_run_id()                                                # same length: same file sizes

# --- helpers -----------------------------------------------------------------------------------------------------
def snapshot(folder) -> dict:
    "Every entry under `folder` (files with a hash of their bytes): equal snapshots = nothing deleted, written or renamed."
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else 'dir'
            for p in sorted(folder.rglob('*'))}

def trained_state(model, gates, seed=1):
    "Make the model and gates differ from a fresh tiny model: scaled weights, a pruned head, a step count."
    with torch.no_grad():
        for p in model.parameters(): p.mul_(1 + 0.1 * seed)
    gates.state.active[-1, 2] = False; gates.set_step(17 * seed)

def make_run(out, name='cycle-1', run_id=RUN_A, step=40, seed=1, min_heads=1, **model_kw):
    "A checkpoint of a tiny GPT-2 in `out/name`; returns `(folder, model, gates, log)`."
    m = tiny_model('gpt2', **model_kw); g = HeadGates(m).install(); trained_state(m, g, seed)
    log = ExperimentLog({'plasticity': {'cycles': 2}}, run_id=run_id)
    log.add(kind='start'); log.add(kind='prune', cycle=1, step=step, heads=[[g.n_layers - 1, 2]])
    folder = save_checkpoint(Path(out)/name, m, g, log, run_id=run_id,
                             extra={'next_cycle': 2, 'global_step': step, 'config': {'min_heads_per_layer': min_heads}})
    return folder, m, g, log

def fresh(**model_kw):
    m = tiny_model('gpt2', seed=5, **model_kw); return m, HeadGates(m).install()

def logits(m):
    with torch.no_grad(): return m(IDS).logits

def weights(m): return {k: v.clone() for k, v in m.state_dict().items()}
def same(a: dict, b: dict) -> bool: return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def fix_size(folder, name):
    "Record `name`'s new size and sha256 in extra.json, so a deliberately changed file gets past those checks to the deeper ones."
    ex = json.loads((folder/'extra.json').read_text()); ex['checkpoint_files'][name] = (folder/name).stat().st_size
    ex['checksums'][name] = hashlib.sha256((folder/name).read_bytes()).hexdigest()
    (folder/'extra.json').write_text(json.dumps(ex))

def edit_json(folder, name, fn):
    d = json.loads((folder/name).read_text()); fn(d); (folder/name).write_text(json.dumps(d))
    if name != 'extra.json': fix_size(folder, name)

def rewrite_weights(folder, fn):
    "Rewrite model.safetensors through `fn(tensors) -> tensors`, keeping its metadata (run id)."
    p = folder/'model.safetensors'
    with safe_open(str(p), 'pt') as f: meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(fn(tensors), str(p), metadata=meta); fix_size(folder, 'model.safetensors')

def refused_without_loading(folder, contains, model_kw=None, with_gates=True, **kw):
    "Load must raise CheckpointError mentioning `contains`, and leave a fresh model and its gates exactly as they were."
    m, g = fresh(**(model_kw or {}))
    before, gates_before, state_before = weights(m), g.gates.clone(), g.state.state_dict()
    with pytest.raises(CheckpointError) as e: load_checkpoint(folder, m, g if with_gates else None, **kw)
    assert contains in str(e.value), str(e.value)
    assert same(weights(m), before) and torch.equal(g.gates, gates_before) and g.state.state_dict() == state_before
    return str(e.value)

# --- the run folder ---------------------------------------------------------------------------------------------
def test_new_refuses_a_folder_that_holds_a_run_and_changes_nothing(tmp_path):
    make_run(tmp_path); write_run_info(tmp_path, {'run_id': RUN_A, 'model': 'tiny'})
    held = snapshot(tmp_path)
    with pytest.raises(RunFolderError) as e: prepare_run_folder(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and f'run {RUN_A}' in msg and 'cycle-1/' in msg
    assert '--resume (resume=True)' in msg and '--overwrite (overwrite=True)' in msg
    assert snapshot(tmp_path) == held
    (tmp_path/'x').mkdir(); (tmp_path/'x'/'y.txt').write_text('user')          # any non-empty folder, even without a run
    with pytest.raises(RunFolderError, match='not empty'): prepare_run_folder(tmp_path/'x')

def test_new_creates_a_missing_folder_and_accepts_an_empty_one(tmp_path):
    assert prepare_run_folder(tmp_path/'a'/'b').is_dir()
    assert prepare_run_folder(tmp_path/'a'/'b', 'new') == tmp_path/'a'/'b'
    assert list((tmp_path/'a'/'b').iterdir()) == []                             # the write probe is gone

@pytest.mark.parametrize('out, mode, contains', [(None, 'new', "give a folder for the run's log and checkpoints"),
                                                 ('', 'overwrite', "give a folder for the run's log and checkpoints"),
                                                 ('FILE', 'new', 'is a file, not a folder'),
                                                 ('FILE', 'overwrite', 'is a file, not a folder'),
                                                 ('MISSING', 'resume', 'no run to resume'),
                                                 ('HERE', 'append', "unknown mode 'append'")])
def test_bad_out_or_mode_is_refused(tmp_path, out, mode, contains):
    (tmp_path/'f.txt').write_text('mine'); held = snapshot(tmp_path)
    out = {'FILE': tmp_path/'f.txt', 'MISSING': tmp_path/'missing', 'HERE': tmp_path}.get(out, out)
    with pytest.raises(RunFolderError, match=contains): prepare_run_folder(out, mode)
    assert snapshot(tmp_path) == held

def test_resume_needs_run_json_and_a_complete_checkpoint(tmp_path):
    empty = tmp_path/'empty'; empty.mkdir()
    with pytest.raises(RunFolderError, match='run.json does not exist'): prepare_run_folder(empty, 'resume')
    write_run_info(empty, {'run_id': RUN_A}); held = snapshot(empty)
    with pytest.raises(RunFolderError, match='holds no complete checkpoint') as e: prepare_run_folder(empty, 'resume')
    assert '--overwrite' in str(e.value) and snapshot(empty) == held
    folder, *_ = make_run(tmp_path/'run'); write_run_info(tmp_path/'run', {'run_id': RUN_A})
    b = (folder/'model.safetensors').read_bytes(); (folder/'model.safetensors').write_bytes(b[:1000])   # the only checkpoint, truncated
    held = snapshot(tmp_path/'run')
    with pytest.raises(RunFolderError, match='holds no complete checkpoint'): prepare_run_folder(tmp_path/'run', 'resume')
    assert snapshot(tmp_path/'run') == held
    (tmp_path/'run'/'run.json').write_text('{"run_id": '); held = snapshot(tmp_path/'run')
    with pytest.raises(RunFolderError, match='run.json is not valid JSON'): prepare_run_folder(tmp_path/'run', 'resume')
    assert snapshot(tmp_path/'run') == held

def test_overwrite_deletes_only_what_a_run_writes(tmp_path):
    for name in ('warmup', 'cycle-1', 'cycle-12', 'stopped'): make_run(tmp_path, name)
    write_run_info(tmp_path, {'run_id': RUN_A}); (tmp_path/'events.jsonl').write_text(''); (tmp_path/'log.json').write_text('{}')
    (tmp_path/'log.json.tmp-1a2b3c4d').write_text('half')                          # a killed atomic write
    shutil.copytree(tmp_path/'cycle-1', tmp_path/'cycle-2.tmp-9f8e7d6c')            # a killed checkpoint save
    (tmp_path/'cycle-2.tmp-9f8e7d6c'/'extra.json').unlink()
    assert prepare_run_folder(tmp_path, 'overwrite') == tmp_path
    assert list(tmp_path.iterdir()) == []

@pytest.mark.parametrize('user_entry', ['notes.txt', 'data/', 'cycle-1/my-notes.txt', 'best/', 'results.tmp.csv', 'link'])
def test_overwrite_refuses_and_deletes_nothing_when_the_folder_holds_user_files(tmp_path, user_entry):
    make_run(tmp_path); write_run_info(tmp_path, {'run_id': RUN_A}); (tmp_path/'events.jsonl').write_text('')
    if user_entry == 'best/': shutil.copytree(tmp_path/'cycle-1', tmp_path/'best')   # a user's copy of a checkpoint
    elif user_entry == 'link': (tmp_path/'link').symlink_to(tmp_path/'cycle-1')
    elif user_entry.endswith('/'): (tmp_path/user_entry).mkdir(); (tmp_path/user_entry/'x.bin').write_bytes(b'1')
    else: (tmp_path/user_entry).write_text('mine')
    held = snapshot(tmp_path)
    with pytest.raises(RunFolderError) as e: prepare_run_folder(tmp_path, 'overwrite')
    msg = str(e.value)
    assert 'nothing was deleted' in msg and user_entry.split('/')[0] in msg, msg
    assert snapshot(tmp_path) == held

def test_every_mode_checks_the_folder_can_be_written(tmp_path, monkeypatch):
    make_run(tmp_path); write_run_info(tmp_path, {'run_id': RUN_A}); held = snapshot(tmp_path)
    real = Path.write_text
    def read_only(self, *a, **k):
        if self.name.startswith('.write-probe'): raise PermissionError(errno.EACCES, 'Permission denied', str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(Path, 'write_text', read_only)
    for mode in ('new', 'resume', 'overwrite'):
        with pytest.raises(RunFolderError, match='cannot write in the run folder .*Permission denied'): prepare_run_folder(tmp_path, mode)
    assert snapshot(tmp_path) == held                                              # overwrite deleted nothing
    with pytest.raises(RunFolderError, match='cannot write'): prepare_run_folder(tmp_path/'new-one')
    assert not (tmp_path/'new-one').exists()                                       # the folder it created is gone again

# --- dry runs: every check of the mode, nothing on disk changed -------------------------------------------------
def read_only_probes(monkeypatch):
    "Make every write probe fail as on a read-only folder (root can write anywhere, so chmod would not do)."
    real = Path.write_text
    def write_text(self, *a, **k):
        if self.name.startswith('.write-probe'): raise PermissionError(errno.EACCES, 'Permission denied', str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(Path, 'write_text', write_text)

@pytest.mark.parametrize('user_entry', ['notes.txt', 'data/', 'cycle-1/my-notes.txt'])
def test_dry_run_overwrite_refuses_a_folder_with_user_files_and_changes_nothing(tmp_path, user_entry):
    make_run(tmp_path); write_run_info(tmp_path, {'run_id': RUN_A}); (tmp_path/'events.jsonl').write_text('')
    if user_entry.endswith('/'): (tmp_path/user_entry).mkdir(); (tmp_path/user_entry/'x.bin').write_bytes(b'1')
    else: (tmp_path/user_entry).write_text('mine')
    held = snapshot(tmp_path)
    with pytest.raises(RunFolderError) as e: prepare_run_folder(tmp_path, 'overwrite', dry_run=True)
    assert 'nothing was deleted' in str(e.value) and user_entry.split('/')[0] in str(e.value)
    assert snapshot(tmp_path) == held

def test_dry_run_accepts_what_the_real_call_accepts_and_changes_nothing(tmp_path):
    make_run(tmp_path); write_run_info(tmp_path, {'run_id': RUN_A}); (tmp_path/'events.jsonl').write_text('')
    held = snapshot(tmp_path)
    for mode in ('resume', 'overwrite'): assert prepare_run_folder(tmp_path, mode, dry_run=True) == tmp_path
    assert snapshot(tmp_path) == held                                              # overwrite deleted nothing
    with pytest.raises(RunFolderError, match='not empty'): prepare_run_folder(tmp_path, 'new', dry_run=True)
    with pytest.raises(RunFolderError, match='no run to resume'): prepare_run_folder(tmp_path/'nope', 'resume', dry_run=True)
    assert snapshot(tmp_path) == held
    prepare_run_folder(tmp_path, 'overwrite'); assert list(tmp_path.iterdir()) == []   # the real call does delete

def test_dry_run_does_not_create_a_missing_folder_but_checks_its_parent(tmp_path, monkeypatch):
    held = snapshot(tmp_path)
    for mode in ('new', 'overwrite'): assert prepare_run_folder(tmp_path/'a'/'b', mode, dry_run=True) == tmp_path/'a'/'b'
    assert snapshot(tmp_path) == held and not (tmp_path/'a').exists()
    (tmp_path/'f.txt').write_text('mine'); held = snapshot(tmp_path)
    with pytest.raises(RunFolderError, match='f.txt is a file, not a folder'): prepare_run_folder(tmp_path/'f.txt'/'run', dry_run=True)
    read_only_probes(monkeypatch)
    with pytest.raises(RunFolderError, match=f'cannot write in the folder that would hold the run folder .*{tmp_path}.*Permission denied'):
        prepare_run_folder(tmp_path/'a'/'b', dry_run=True)
    with pytest.raises(RunFolderError, match='cannot write in the run folder .*Permission denied'):
        prepare_run_folder(tmp_path, 'overwrite', dry_run=True)                    # an existing folder: probed itself
    assert snapshot(tmp_path) == held and not (tmp_path/'a').exists()

def test_dry_run_resume_leaves_an_interrupted_swap_for_the_real_call(tmp_path):
    make_run(tmp_path, 'cycle-1', step=40); folder, *_ = make_run(tmp_path, 'cycle-2', step=80)
    write_run_info(tmp_path, {'run_id': RUN_A})
    aside = tmp_path/'cycle-2.tmp-old-1a2b3c4d'; os.rename(folder, aside); held = snapshot(tmp_path)
    prepare_run_folder(tmp_path, 'resume', dry_run=True)
    assert snapshot(tmp_path) == held and aside.exists()
    prepare_run_folder(tmp_path, 'resume'); assert latest_checkpoint(tmp_path) == folder

def test_run_info_round_trip_and_differences(tmp_path):
    info = {'run_id': RUN_A, 'model': 'sentinel-tiny', 'corpus': 'shakespeare', 'created': 1.0,
            'data': {'block_size': 128, 'batch_size': 8, 'max_blocks': None, 'seed': 0, 'fingerprint': 'ab12'},
            'config': {'cycles': 2, 'prune_level': 0.3, 'protected': [[0, 1]]}}
    write_run_info(tmp_path, info); assert read_run_info(tmp_path) == info
    now = json.loads(json.dumps(info)); now['created'] = 2.0; now['config']['cycles'] = 5
    assert run_info_differences(info, now) == []
    now['data']['block_size'] = 64; now['model'] = 'gpt2'; now['config']['protected'] = []; del now['data']['fingerprint']
    assert run_info_differences(info, now) == ['config.protected: [[0, 1]] -> []', 'data.block_size: 128 -> 64',
                                               'data.fingerprint: "ab12" -> <missing>', 'model: "sentinel-tiny" -> "gpt2"']
    assert 'config.cycles: 2 -> 5' in run_info_differences(info, now, ignore=())
    with pytest.raises(RunFolderError, match="needs a string 'run_id'"): write_run_info(tmp_path, {'model': 'x'})
    (tmp_path/'run.json').write_text('[1, 2]')
    with pytest.raises(RunFolderError, match='run.json holds a JSON list'): read_run_info(tmp_path)
    assert new_run_id(1e9) < new_run_id(1e9 + 0.001) < new_run_id(2e9) and new_run_id(1e9) != new_run_id(1e9)

# --- atomic saves -----------------------------------------------------------------------------------------------------
def test_a_kill_at_the_final_rename_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    folder, m, g, log = make_run(tmp_path, step=40)
    old = snapshot(folder); want = logits(m)
    trained_state(m, g, seed=3); log.add(kind='learn', cycle=1, step=80)
    real = os.rename
    def killed(src, dst):
        if Path(dst) == folder and '.tmp-' in Path(src).name and '-old-' not in Path(src).name: raise KeyboardInterrupt
        return real(src, dst)
    monkeypatch.setattr(os, 'rename', killed)
    with pytest.raises(KeyboardInterrupt): save_checkpoint(folder, m, g, log, run_id=RUN_A, extra={'global_step': 80})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cycle-1'] and snapshot(folder) == old   # no mix, no leftovers
    m2, g2 = fresh(); _, extra = load_checkpoint(folder, m2, g2, run_id=RUN_A)
    assert extra['global_step'] == 40 and torch.equal(logits(m2), want) and g2.state.step == 17

def test_a_kill_while_writing_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    folder, m, g, log = make_run(tmp_path, step=40); old = snapshot(folder)
    def dies_half_way(model, filename, metadata=None):
        Path(filename).write_bytes(b'\0' * 100); raise MemoryError("killed while writing the weights")
    monkeypatch.setattr(logmod, 'save_model', dies_half_way)
    with pytest.raises(MemoryError): save_checkpoint(folder, m, g, log, run_id=RUN_A, extra={'global_step': 80})
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cycle-1'] and snapshot(folder) == old
    assert latest_checkpoint(tmp_path) == folder
    load_checkpoint(folder, *fresh(), run_id=RUN_A)

def test_a_kill_between_the_two_renames_is_put_back_by_resume(tmp_path):
    make_run(tmp_path, 'cycle-1', step=40); folder, *_ = make_run(tmp_path, 'cycle-2', step=80)
    write_run_info(tmp_path, {'run_id': RUN_A})
    aside = tmp_path/'cycle-2.tmp-old-1a2b3c4d'; os.rename(folder, aside)          # the state a SIGKILL there leaves
    shutil.copytree(tmp_path/'cycle-1', tmp_path/'cycle-2.tmp-5e6f7a8b')           # ...beside the new copy, not yet renamed
    assert latest_checkpoint(tmp_path).name == 'cycle-1'                           # temporary folders are never picked
    prepare_run_folder(tmp_path, 'resume')
    assert latest_checkpoint(tmp_path) == folder and not aside.exists()
    assert load_checkpoint(folder, *fresh(), run_id=RUN_A)[1]['global_step'] == 80

def test_overwriting_a_checkpoint_replaces_every_file(tmp_path):
    folder, m, g, log = make_run(tmp_path, run_id=RUN_A)
    trained_state(m, g, seed=2); save_checkpoint(folder, m, g, log, run_id=RUN_B, extra={'global_step': 99})
    m2, g2 = fresh(); log2, extra = load_checkpoint(folder, m2, g2, run_id=RUN_B)
    assert extra == {'global_step': 99, 'run_id': RUN_B} and log2.run_id == RUN_B and torch.equal(logits(m2), logits(m))
    with safe_open(str(folder/'model.safetensors'), 'pt') as f: assert f.metadata()['run_id'] == RUN_B
    assert json.loads((folder/'head_state.json').read_text())['run_id'] == RUN_B
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cycle-1']

# --- loading checks everything first ------------------------------------------------------------------------------------
@pytest.mark.parametrize('tied', [True, False])
def test_round_trip_tied_and_untied_gpt2(tmp_path, tied):
    folder, m, g, _ = make_run(tmp_path, tie_word_embeddings=tied)
    m2, g2 = fresh(tie_word_embeddings=tied); load_checkpoint(folder, m2, g2, run_id=RUN_A)
    assert torch.equal(logits(m2), logits(m)) and g2.state.state_dict() == g.state.state_dict()
    assert (m2.lm_head.weight.data_ptr() == m2.transformer.wte.weight.data_ptr()) == tied
    # the other variant: the file has one tensor too few (untied model) or one too many (tied model)
    refused_without_loading(folder, '1 of the 29 tensors it needs are missing (transformer.wte.weight)' if tied
                            else '1 in the file are unexpected (transformer.wte.weight)', {'tie_word_embeddings': not tied})

def test_run_ids_of_the_files_must_agree(tmp_path):
    folder, *_ = make_run(tmp_path/'a', run_id=RUN_A)
    other, *_ = make_run(tmp_path/'b', run_id=RUN_B, seed=4)
    shutil.copy(other/'model.safetensors', folder/'model.safetensors')             # new weights beside the old log and head state
    refused_without_loading(folder, 'does not match the sha256')                  # the checksum notices first
    fix_size(folder, 'model.safetensors')                                           # past it (extra.json edited too): the run ids
    msg = refused_without_loading(folder, 'belong to different runs')
    assert f'model.safetensors: {RUN_B}' in msg and f'log.json: {RUN_A}' in msg
    refused_without_loading(other, f'belongs to run {RUN_B}, not to this run ({RUN_A})', run_id=RUN_A)
    for name in ('head_state.json', 'log.json', 'extra.json'):
        f2, *_ = make_run(tmp_path/name, run_id=RUN_A)
        edit_json(f2, name, lambda d: d.update(run_id=RUN_B))
        refused_without_loading(f2, f'{name}: {RUN_B}')

def test_deleted_tensors_are_counted_and_named(tmp_path):
    folder, *_ = make_run(tmp_path)
    rewrite_weights(folder, lambda t: dict(list(sorted(t.items()))[:4]))
    msg = refused_without_loading(folder, '24 of the 28 tensors it needs are missing')
    assert '(transformer.h.0.attn.c_proj.weight, transformer.h.0.ln_1.bias,' in msg and '(19 more)' in msg and '0 in the file are unexpected' in msg

def test_extra_tensors_are_refused(tmp_path):
    folder, *_ = make_run(tmp_path)
    rewrite_weights(folder, lambda t: {**t, 'transformer.h.9.mlp.c_fc.weight': torch.zeros(2, 2)})
    refused_without_loading(folder, '1 in the file are unexpected (transformer.h.9.mlp.c_fc.weight)')

def test_wrong_shapes_are_refused(tmp_path):
    folder, *_ = make_run(tmp_path)
    rewrite_weights(folder, lambda t: {**t, 'transformer.h.1.mlp.c_fc.weight': t['transformer.h.1.mlp.c_fc.weight'][:, :8].contiguous()})
    refused_without_loading(folder, 'transformer.h.1.mlp.c_fc.weight [32, 8] vs model [32, 128]')

@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_weights_are_refused(tmp_path, bad):
    folder, *_ = make_run(tmp_path)
    def poison(t): t['transformer.h.0.ln_1.weight'][3] = bad; return t
    rewrite_weights(folder, poison)
    refused_without_loading(folder, 'non-finite values (nan/inf) in 1 tensors (transformer.h.0.ln_1.weight)')

@pytest.mark.parametrize('name', ['model.safetensors', 'head_state.json', 'log.json', 'extra.json'])
@pytest.mark.parametrize('damage', ['truncate', 'corrupt'])
def test_truncated_or_corrupt_files_are_named(tmp_path, name, damage):
    folder, *_ = make_run(tmp_path)
    p = folder/name; b = p.read_bytes()
    if damage == 'truncate': p.write_bytes(b[:len(b) // 3])
    else: p.write_bytes(b[:10] + b'\x00\xff' * ((len(b) - 10) // 2) + b[:(len(b) - 10) % 2])   # same size, garbage after 10 bytes
    msg = refused_without_loading(folder, str(p))
    if name == 'extra.json': assert 'is not valid JSON' in msg
    elif damage == 'truncate': assert 'bytes, the checkpoint wrote' in msg and 'truncated' in msg
    else:                                             # same size: the sha256 notices; past it, the parser does
        assert 'does not match the sha256' in msg
        fix_size(folder, name)
        assert ('cannot be read' if name.endswith('safetensors') else 'is not valid JSON') in refused_without_loading(folder, str(p))
    if name != 'extra.json' and damage == 'truncate':                              # past the size check, the parser notices
        fix_size(folder, name); refused_without_loading(folder, str(p))

def test_a_missing_file_is_named(tmp_path):
    folder, *_ = make_run(tmp_path)
    (folder/'head_state.json').unlink()
    refused_without_loading(folder, 'head_state.json is missing: the checkpoint is incomplete')

def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    folder, *_ = make_run(tmp_path)                                                # 2 layers x 4 heads, n_embd 32
    refused_without_loading(folder, 'does not fit this model: 12 of the 40 tensors', {'n_layer': 3, 'n_head': 2})
    refused_without_loading(folder, 'other shapes', {'n_embd': 16, 'n_head': 2})
    small, *_ = make_run(tmp_path/'small', n_layer=1)
    refused_without_loading(small, '12 of the 28 tensors it needs are missing')

def test_head_state_of_the_wrong_shape_is_refused(tmp_path):
    folder, *_ = make_run(tmp_path)
    edit_json(folder, 'head_state.json', lambda d: d.update(lr_boost=[[1.0] * 3] * 2))
    refused_without_loading(folder, "'lr_boost' is [2, 3] but the model has [2, 4] heads")
    edit_json(folder, 'head_state.json', lambda d: d.update(lr_boost=[[1.0] * 4] * 2, gates=[[1.0, float('nan'), 1.0, 1.0]] * 2))
    refused_without_loading(folder, "'gates' holds non-finite values")

def test_a_layer_with_too_few_active_heads_is_refused(tmp_path):
    folder, *_ = make_run(tmp_path)
    edit_json(folder, 'head_state.json', lambda d: d.update(active=[[True] * 4, [False] * 4]))
    refused_without_loading(folder, 'fewer than 1 active heads in layer 1: 0')
    two, *_ = make_run(tmp_path/'two', min_heads=2)                               # the saved config's min_heads_per_layer
    edit_json(two, 'head_state.json', lambda d: d.update(active=[[True] * 4, [True, False, False, False]]))
    refused_without_loading(two, 'fewer than 2 active heads in layer 1: 1')
    edit_json(folder, 'head_state.json', lambda d: d.update(active=[[True] * 4, [True, True, True, False]], gates=[[1.0] * 4, [0.0, 0.0, 0.0, 1.0]]))
    refused_without_loading(folder, 'layer 1: 0')                                  # active but gated to 0 is not active
    zero, *_ = make_run(tmp_path/'zero', min_heads=0)
    edit_json(zero, 'head_state.json', lambda d: d.update(active=[[True] * 4, [False] * 4]))
    m, g = fresh(); load_checkpoint(zero, m, g); assert int(g.state.active[1].sum()) == 0

def test_heads_out_of_range_in_the_log_are_refused(tmp_path):
    folder, *_ = make_run(tmp_path)
    edit_json(folder, 'log.json', lambda d: d['events'][1].update(heads=[[1, 2], [0, 4]]))
    refused_without_loading(folder, 'event 1 (prune, cycle 1) names heads [[0, 4]] outside')
    edit_json(folder, 'log.json', lambda d: d['events'][1].update(heads=[[2, 0]]))
    refused_without_loading(folder, 'names heads [[2, 0]]', with_gates=False)       # without gates: the model's config says [2, 4]
    edit_json(folder, 'log.json', lambda d: d['events'][1].update(heads=[[0, 1, 2]]))
    refused_without_loading(folder, 'heads must be [layer, head] pairs')

def test_a_checkpoint_from_before_run_ids_still_loads(tmp_path):
    "The format older code wrote: no run ids, no recorded file sizes."
    m = tiny_model('gpt2'); g = HeadGates(m).install(); trained_state(m, g)
    folder = tmp_path/'cycle-1'; folder.mkdir()
    save_model(m, str(folder/'model.safetensors'))
    (folder/'head_state.json').write_text(json.dumps({'gates': g.gates.tolist(), **g.state.state_dict()}))
    ExperimentLog({'x': 1}, [Event('start')]).save(folder/'log.json'); (folder/'extra.json').write_text('{"next_cycle": 2}')
    m2, g2 = fresh(); log, extra = load_checkpoint(folder, m2, g2)
    assert extra == {'next_cycle': 2} and len(log) == 1 and torch.equal(logits(m2), logits(m))
    refused_without_loading(folder, 'belongs to run None, not to this run', run_id=RUN_A)

# --- logs and live events -----------------------------------------------------------------------------------------
def test_events_can_be_followed_live_with_a_partial_last_line(tmp_path):
    path = tmp_path/'events.jsonl'
    writer = ExperimentLog({'a': 1}, events_path=path)
    writer.add(kind='start'); writer.add(kind='prune', cycle=1, heads=[[0, 1]], scores={'s': torch.ones(2, 4)})
    line = json.dumps(Event('measure', cycle=1, metrics_after={'perplexity': 9.5}).to_dict()) + '\n'
    with open(path, 'a') as f: f.write(line[:25]); f.flush()                       # the writer is mid-line
    seen = ExperimentLog.read_events(path)                                          # a reader, as another process would
    assert [e.kind for e in seen] == ['start', 'prune'] and seen[1].scores == {'s': [[1.0] * 4] * 2}
    with open(path, 'a') as f: f.write(line[25:])                                   # the line is finished
    assert [e.kind for e in ExperimentLog.read_events(path)] == ['start', 'prune', 'measure']
    writer.write_events()                                                           # resume: back to the log's own events
    writer.add(kind='resume')
    assert [e.kind for e in ExperimentLog.read_events(path)] == ['start', 'prune', 'resume']
    path.write_text(path.read_text().replace('"prune"', '"prunes"'))
    with pytest.raises(LogFileError, match="events.jsonl, line 2: unknown kind 'prunes'"): ExperimentLog.read_events(path)
    with pytest.raises(LogFileError, match='does not exist'): ExperimentLog.read_events(tmp_path/'none.jsonl')

def test_a_bad_log_file_gives_a_clear_error(tmp_path):
    log = ExperimentLog({'a': 1}, run_id=RUN_A); log.add(kind='start'); p = log.save(tmp_path/'log.json')
    assert ExperimentLog.load(p).run_id == RUN_A
    for text, contains in [(p.read_text()[:30], 'is not valid JSON'), ('not json at all', 'is not valid JSON'),
                           ('[]', 'holds a JSON list'), ('{"config": {}, "events": [], "schema_version": 7}', 'schema_version 7'),
                           ('{"config": {}, "events": [{"kind": "start"}], "schema_version": 1}', "event 0: missing field 'cycle'")]:
        p.write_text(text)
        with pytest.raises(LogFileError) as e: ExperimentLog.load(p)
        assert str(p) in str(e.value) and contains in str(e.value), str(e.value)

def test_latest_checkpoint_picks_the_highest_step_then_the_newest(tmp_path):
    assert latest_checkpoint(tmp_path) is None and latest_checkpoint(tmp_path/'missing') is None
    for name, step in [('warmup', 10), ('cycle-1', 40), ('cycle-2', 80), ('stopped', 80)]: make_run(tmp_path, name, step=step)
    t = 1_700_000_000
    os.utime(tmp_path/'cycle-2'/'extra.json', (t + 10, t + 10)); os.utime(tmp_path/'stopped'/'extra.json', (t, t))
    assert latest_checkpoint(tmp_path).name == 'cycle-2'                          # same step: the later written wins
    os.utime(tmp_path/'stopped'/'extra.json', (t + 20, t + 20))
    assert latest_checkpoint(tmp_path).name == 'stopped'
    shutil.copytree(tmp_path/'cycle-2', tmp_path/'cycle-3.tmp-1a2b3c4d'); edit_json(tmp_path/'cycle-3.tmp-1a2b3c4d', 'extra.json', lambda d: d.update(global_step=120))
    (tmp_path/'stopped'/'log.json').unlink()                                        # incomplete: ignored
    assert latest_checkpoint(tmp_path).name == 'cycle-2'
    (tmp_path/'cycle-2'/'extra.json').write_text('{"global_')                       # unreadable: ignored
    assert latest_checkpoint(tmp_path).name == 'cycle-1'

def test_extra_files_are_part_of_the_atomic_checkpoint(tmp_path):
    m, g = fresh(); state = {'run_id': RUN_A, 'rng': torch.arange(5)}
    folder = save_checkpoint(tmp_path/'cycle-1', m, g, extra={'global_step': 5}, run_id=RUN_A,
                             extra_files={'trainer.pt': lambda p: torch.save(state, p)})
    assert torch.equal(torch.load(folder/'trainer.pt', weights_only=True)['rng'], state['rng'])
    assert 'trainer.pt' in json.loads((folder/'extra.json').read_text())['checkpoint_files']
    load_checkpoint(folder, *fresh(), run_id=RUN_A)
    with pytest.raises(CheckpointError, match='plain file name'): save_checkpoint(folder, m, g, extra_files={'log.json': print})
    write_run_info(tmp_path, {'run_id': RUN_A}); prepare_run_folder(tmp_path, 'overwrite')   # a recorded extra file is the run's
    assert list(tmp_path.iterdir()) == []
    folder = save_checkpoint(tmp_path/'cycle-1', m, g, run_id=RUN_A, extra_files={'trainer.pt': lambda p: torch.save(state, p)})
    (folder/'trainer.pt').unlink()
    refused_without_loading(folder, 'trainer.pt is missing: the checkpoint is incomplete')
    (folder/'optimizer.pt').write_bytes(b'x')                                        # not recorded: not the run's
    with pytest.raises(RunFolderError, match='cycle-1/'): prepare_run_folder(tmp_path, 'overwrite')

def test_a_resume_may_change_only_cycles_and_mixed_precision():
    "A run started on an A100 (bf16) resumes on a T4 (fp16): the device's precision is not a different run."
    saved = {'config': {'cycles': 2, 'mixed_precision': 'bf16', 'steps': 40}, 'created': 'then'}
    assert run_info_differences(saved, {'config': {'cycles': 3, 'mixed_precision': 'fp16', 'steps': 40}, 'created': 'now'}) == []
    assert run_info_differences(saved, {'config': {'cycles': 2, 'mixed_precision': 'bf16', 'steps': 4}}) == ['config.steps: 40 -> 4']

def test_overwrite_takes_a_checkpoint_half_written_by_a_killed_run(tmp_path):
    "A kill inside save_checkpoint leaves NAME.tmp-XXXX/ with some of its files (trainer.pt first): it is the run's, not the user's."
    out = tmp_path/'run'; out.mkdir(); (out/'run.json').write_text('{}')
    tmp = out/'stopped.tmp-1a2b3c4d'; tmp.mkdir(); (tmp/'trainer.pt').write_bytes(b'partial')
    prepare_run_folder(out, 'overwrite')
    assert list(out.iterdir()) == []
