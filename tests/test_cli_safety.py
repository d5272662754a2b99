"""Nothing a user types (or the disk does) destroys a run: `sentinel report -o` never writes over a file that is not a
report, `--save-pruned` is checked before the model loads and written only when the run finishes (whole or not at all),
filesystem errors name the file and the flag, a resume never shortens a run, `bench` checks every model before the
first run, and a damaged or moved model folder is said to be so. Every case through `sentinel_nb.cli.main`."""
import errno, json, os, shlex, shutil
from pathlib import Path
import pytest
import sentinel_nb.cli as cli
import sentinel_nb.cycle as cycle
from sentinel_nb.cli import main
from sentinel_nb.models import tiny_model, tiny_tokenizer
from sentinel_nb.loading import load_model
from sentinel_nb.physical import prune_physically, save_pruned, LAYOUT_FILE, WEIGHTS_FILE
from cli_stop import ctrl_c_at                                  # Ctrl-C inside a CLI run (tests/cli_stop.py)
from test_bad_inputs import error_line, tree_hash, TINY_RUN, text_file, finished_run, run_copy   # noqa: F401 (fixtures)

DISK_FULL = 'the disk is full: free some space, or give a path on another disk'


def no_model_load(monkeypatch):
    "Fail the test if the command gets as far as loading a model."
    def loaded(*a, **k): raise AssertionError('the model was loaded before the error')
    monkeypatch.setattr(cli, 'load_model_for', loaded)


@pytest.fixture
def pruned_folder(tmp_path) -> Path:
    "A physically pruned tiny GPT-2 written by save_pruned, with its tokenizer."
    m = tiny_model('gpt2'); prune_physically(m, [(0, 1), (1, 0)])
    return save_pruned(m, tmp_path/'pruned', tokenizer=tiny_tokenizer())


# --- 1. sentinel report -o ------------------------------------------------------------------------------------------

@pytest.mark.parametrize('target', ['run.json', 'log.json', 'cycle-1/model.safetensors', 'notes.txt'])
def test_report_never_overwrites_what_is_not_a_report(capsys, run_copy, target):
    (run_copy/'notes.txt').write_text('my notes')
    held = tree_hash(run_copy)
    error_line(capsys, ['report', str(run_copy), '-o', str(run_copy/target)],
               f'-o/--output {run_copy/target} exists and is not a report written by sentinel_nb', 'Give a new file name')
    assert tree_hash(run_copy) == held


def test_report_replaces_a_previous_report(capsys, run_copy):
    old = run_copy/'report.html'; assert old.is_file()      # the run's own
    old.write_text(old.read_text().replace('</body>', '<p>old</p></body>'))
    assert main(['report', str(run_copy), '--no-attention']) == 0, capsys.readouterr().err
    assert '<p>old</p>' not in old.read_text()


@pytest.mark.parametrize('where, says', [('folder', 'is a folder: give a file name'), ('under a file', 'which is a file')])
def test_report_output_that_cannot_be_a_file(capsys, monkeypatch, run_copy, tmp_path, where, says):
    import sentinel_nb.report as report
    monkeypatch.setattr(report, '_page', lambda *a: pytest.fail('the report was built before the error'))
    target = tmp_path if where == 'folder' else run_copy/'run.json'/'report.html'
    held = tree_hash(run_copy)
    error_line(capsys, ['report', str(run_copy), '-o', str(target)], '-o/--output', says)
    assert tree_hash(run_copy) == held


def test_report_disk_full_leaves_the_old_report_and_no_temporary(capsys, monkeypatch, run_copy, tmp_path):
    out = tmp_path/'r.html'
    assert main(['report', str(run_copy), '-o', str(out), '--no-attention']) == 0; capsys.readouterr()
    before = out.read_bytes()
    def disk_full(fd): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', disk_full)
    error_line(capsys, ['report', str(run_copy), '-o', str(out), '--no-attention'],
               f'No space left on device writing or reading {out} (the path of -o/--output): {DISK_FULL}')
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != 'run') == ['r.html']      # no r.html.tmp-*


# --- 2. --save-pruned -------------------------------------------------------------------------------------------------

def test_save_pruned_under_a_file_is_refused_before_the_model_loads(capsys, monkeypatch, tmp_path, text_file):
    no_model_load(monkeypatch)
    f = tmp_path/'file.txt'; f.write_text('mine')
    error_line(capsys, ['run', '--out', str(tmp_path/'run'), '--corpus', str(text_file), '--save-pruned', str(f/'pruned'), *TINY_RUN],
               f'--save-pruned {f/"pruned"} is under {f}, which is a file')
    assert not (tmp_path/'run').exists() and f.read_text() == 'mine'


def test_a_stopped_run_writes_no_pruned_model_and_its_resume_does(capsys, monkeypatch, tmp_path, text_file):
    out, saved = tmp_path/'run', tmp_path/'pruned'
    real = ctrl_c_at(monkeypatch, 'learn 1', 2)
    assert main(['run', '--out', str(out), '--corpus', str(text_file), '--save-pruned', str(saved), *TINY_RUN, '--steps', '4']) == 130
    res, err = capsys.readouterr()
    assert json.loads(res)['pruned_model'] is None and not saved.exists()
    assert f'the pruned model was not written to {saved}: the run stopped before its end' in err, err
    again = err.split('continue it with: ')[1].splitlines()[0]
    assert again == shlex.join(['sentinel', 'run', '--out', str(out), '--resume', '--save-pruned', str(saved)])
    monkeypatch.setattr(cycle, 'run_plasticity', real)
    assert main(shlex.split(again)[1:]) == 0, capsys.readouterr().err
    res, err = capsys.readouterr()
    assert f'pruned model saved in {saved}' in err and json.loads(res)['pruned_model']['folder'] == str(saved)
    model, tok = load_model(saved)
    assert len(tok) > 100                                     # the run's tokenizer came along


def test_save_pruned_disk_full_leaves_no_folder(capsys, monkeypatch, tmp_path, text_file):
    import sentinel_nb.physical as physical
    def disk_full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(physical, 'save_model', disk_full)
    saved = tmp_path/'pruned'
    error_line(capsys, ['run', '--out', str(tmp_path/'run'), '--corpus', str(text_file), '--save-pruned', str(saved), *TINY_RUN],
               f'No space left on device writing or reading {saved} (the path of --save-pruned): {DISK_FULL}', alone=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['run']        # no pruned folder, whole or half, no pruned.tmp-*


# --- 5. filesystem errors -----------------------------------------------------------------------------------------------

def test_permission_error_in_the_run_folder_names_out(capsys, monkeypatch, tmp_path, text_file):
    import sentinel_nb.log as log
    def denied(path, text): raise PermissionError(errno.EACCES, 'Permission denied', str(path))
    monkeypatch.setattr(log, '_write_atomic', denied)
    out = tmp_path/'run'
    line = error_line(capsys, ['run', '--out', str(out), '--corpus', str(text_file), *TINY_RUN],
                      f'Permission denied writing or reading {out}', '(the path of --out): no permission', alone=False)
    assert 'internal error' not in line


# --- 6. a resume never shortens a run ----------------------------------------------------------------------------------

def test_resume_with_fewer_cycles_than_done_is_refused(capsys, monkeypatch, tmp_path, text_file):
    out = tmp_path/'run'
    assert main(['run', '--out', str(out), '--corpus', str(text_file), *TINY_RUN, '--cycles', '2', '--no-report']) == 0
    capsys.readouterr(); held = tree_hash(out)
    no_model_load(monkeypatch)
    error_line(capsys, ['run', '--out', str(out), '--resume', '--cycles', '1'],
               '--cycles is 1, fewer than the 2 cycles the run has already begun', 'give --cycles 2 or more')
    assert tree_hash(out) == held


# --- 3. bench checks every model first -----------------------------------------------------------------------------------

def test_bench_checks_every_model_before_the_first_run(capsys, tmp_path):
    error_line(capsys, ['bench', '--models', 'sentinel-tiny', 'no such model', '--out', str(tmp_path/'b')],
               "--models 'no such model' (entry 2 of 2)", 'nothing was run')
    assert not (tmp_path/'b').exists()


# --- 4. model folders ---------------------------------------------------------------------------------------------------

def test_pruned_folder_without_tokenizer_is_refused(capsys, tmp_path):
    m = tiny_model('gpt2'); prune_physically(m, [(0, 1)])
    folder = save_pruned(m, tmp_path/'bare')                          # no tokenizer=
    error_line(capsys, ['eval', '--model', str(folder)], f'{folder} holds no tokenizer files', 'tokenizer.save_pretrained', alone=False)


@pytest.mark.parametrize('damage, says', [
    ('layout', f'{LAYOUT_FILE} is missing'), ('truncated', f'{WEIGHTS_FILE} is damaged'), ('header', f'{WEIGHTS_FILE} is damaged')])
def test_damaged_pruned_folder_names_the_file(capsys, pruned_folder, damage, says):
    w = pruned_folder/WEIGHTS_FILE
    if damage == 'layout': (pruned_folder/LAYOUT_FILE).unlink()
    elif damage == 'truncated': w.write_bytes(w.read_bytes()[:-100])
    else: w.write_bytes(w.read_bytes()[:50])
    line = error_line(capsys, ['eval', '--model', str(pruned_folder)], says, 'write', alone=False)
    assert 'internal error' not in line


def test_moved_local_model_folder_is_not_a_hub_failure(capsys, monkeypatch, tmp_path):
    error_line(capsys, ['eval', '--model', str(tmp_path/'moved'/'pruned')], 'that local folder or file does not exist')
    (tmp_path/'runs').mkdir(); monkeypatch.chdir(tmp_path)
    line = error_line(capsys, ['eval', '--model', 'runs/pruned'], "no model at 'runs/pruned'", 'does not exist')
    assert 'hub' not in line.lower()
    with pytest.raises(FileNotFoundError, match='does not exist'): load_model('runs/pruned')


def test_empty_model_name(capsys):
    with pytest.raises(ValueError, match='the model name is empty'): load_model('')
    error_line(capsys, ['eval', '--model', ''], '--model is empty')
