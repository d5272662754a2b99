"""Every input a user can get wrong, through `sentinel_nb.cli.main`: one `sentinel: error: ...` line on stderr that
names the problem, exit status 2 (1 for our own bugs, 130 for Ctrl-C), no traceback unless --debug, and nothing on
disk lost. Most errors come before any model loads (milliseconds); the few that need a model use the offline
`sentinel-tiny` (or a tiny random GPT-2 saved to a folder) on a small text, with one-step runs."""
import hashlib, json, shutil
from pathlib import Path
import pytest
import sentinel_nb.cli as cli
from sentinel_nb.cli import main
from sentinel_nb.data import load_corpus

# the smallest run that writes a checkpoint: no warm-up, one cycle of one step, one batch per measurement
TINY_RUN = ['--cycles', '1', '--steps', '1', '--warmup-max-steps', '0', '--block-size', '32', '--batch-size', '2',
            '--max-blocks', '4', '--eval-batches', '1', '--score-batches', '1', '--max-new-tokens', '2', '--prompts', 'To be']


def error_line(capsys, argv, *contains, code=2, alone=True) -> str:
    "Run `main(argv)`; check the exit status, the one `sentinel: error:` line (with `contains`) and that no traceback shows."
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = [l for l in err.splitlines() if l.startswith('sentinel: error:')]
    assert rc == code, (rc, err)
    assert len(lines) == 1 and err.splitlines()[-1] == lines[0], err       # one error line, the last thing printed
    assert 'Traceback' not in err, err
    assert out == '', out                                                   # no JSON result on stdout
    if alone: assert err == lines[0] + '\n', err                            # an early error: nothing else was printed
    for c in contains: assert c in lines[0], (c, lines[0])
    return lines[0]


def usage_error(capsys, argv, *contains) -> str:
    "argparse's own errors: usage lines, then the `sentinel: error:` line, status 2."
    return error_line(capsys, argv, *contains, alone=False)


def tree_hash(folder: Path) -> str:
    "One hash of every file's relative path and bytes under `folder`."
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob('*')):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file(): h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope='module')
def text_file(tmp_path_factory) -> Path:
    "A few thousand tokens of Macbeth as a .txt file: small enough to pack in milliseconds."
    p = tmp_path_factory.mktemp('corpus')/'macbeth.txt'
    p.write_text(load_corpus('shakespeare')['validation']['text'][0][:30_000])
    return p


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, text_file) -> Path:
    "A complete one-cycle sentinel-tiny run folder (copy it before use: `run_copy`)."
    out = tmp_path_factory.mktemp('runs')/'tiny'
    assert main(['run', '--corpus', str(text_file), '--out', str(out), *TINY_RUN]) == 0
    return out


@pytest.fixture(scope='module')
def other_model_run(tmp_path_factory, text_file) -> Path:
    "A run of a different model (a tiny random GPT-2 in a folder): its checkpoints do not fit sentinel-tiny."
    from sentinel_nb.models import tiny_model, tiny_tokenizer
    folder = tmp_path_factory.mktemp('models')/'tiny-gpt2'
    tiny_model('gpt2').save_pretrained(folder); tiny_tokenizer().save_pretrained(folder)
    out = tmp_path_factory.mktemp('runs')/'other'
    assert main(['run', '--model', str(folder), '--corpus', str(text_file), '--out', str(out), *TINY_RUN]) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    dst = tmp_path/'run'; shutil.copytree(finished_run, dst); return dst


# --- settings with a set of choices (argparse) ----------------------------------------------------------------------

def test_unknown_prune_strategy(capsys, tmp_path):
    usage_error(capsys, ['run', '--out', str(tmp_path/'o'), '--prune-strategy', 'loudest'], '--prune-strategy', "invalid choice: 'loudest'")

def test_unknown_grow_strategy(capsys, tmp_path):
    usage_error(capsys, ['run', '--out', str(tmp_path/'o'), '--grow-strategy', 'magic'], '--grow-strategy', "invalid choice: 'magic'")

def test_unknown_grow_init(capsys, tmp_path):
    usage_error(capsys, ['run', '--out', str(tmp_path/'o'), '--grow-init', 'zeros'], '--grow-init', "invalid choice: 'zeros'")

def test_unknown_compare_strategy(capsys):
    usage_error(capsys, ['compare', '--strategies', 'random', 'biggest'], '--strategies', "invalid choice: 'biggest'")

def test_not_a_number(capsys, tmp_path):
    usage_error(capsys, ['run', '--out', str(tmp_path/'o'), '--steps', 'ten'], '--steps', "invalid int value: 'ten'")

def test_missing_out(capsys):
    usage_error(capsys, ['run'], 'the following arguments are required: --out')

# --- values out of range, found before anything loads ----------------------------------------------------------------

@pytest.mark.parametrize('flag, value, says', [
    ('--prune-level', '1.5', '--prune-level must be a finite number in [0, 1), got 1.5'),
    ('--grow-ratio', '-0.1', '--grow-ratio must be a finite number in [0, 1], got -0.1'),
    ('--cycles', '0', '--cycles must be an integer >= 1, got 0'),
    ('--steps', '-1', '--steps must be an integer >= 0, got -1'),
    ('--warmup-window', '0', '--warmup-window must be an integer >= 1, got 0'),
    ('--eval-batches', '0', '--eval-batches must be an integer >= 1, got 0'),
    ('--score-batches', '0', '--score-batches must be an integer >= 1, got 0'),
    ('--prune-level', '1.0', '--prune-level must be a finite number in [0, 1), got 1.0'),
    ('--prune-level', 'nan', '--prune-level must be a finite number in [0, 1), got nan'),
    ('--grow-ratio', '2', '--grow-ratio must be a finite number in [0, 1], got 2.0'),
    ('--lr', '0', '--lr must be a finite number > 0, got 0.0'),
    ('--lr', 'nan', '--lr must be a finite number > 0, got nan'),
    ('--lr', 'inf', '--lr must be a finite number > 0, got inf'),
    ('--cycles', '-3', '--cycles must be an integer >= 1, got -3'),
])
def test_run_number_out_of_range(capsys, tmp_path, flag, value, says):
    out = tmp_path/'o'
    error_line(capsys, ['run', '--out', str(out), flag, value], says)
    assert not out.exists()                                   # refused before the run folder was created

@pytest.mark.parametrize('argv, says', [
    (['--lr', '0'], '--lr must be a finite number > 0, got 0.0'),
    (['--lr', 'nan'], '--lr must be a finite number > 0, got nan'),
    (['--level', 'nan'], '--level must be in [0, 1)'),
    (['--level', '-0.1'], '--level must be in [0, 1)'),
    (['--seed', '-1'], '--seed must be an integer in [0, 4294967295], got -1'),
])
def test_compare_number_out_of_range(capsys, argv, says):
    error_line(capsys, ['compare', *argv], says)

def test_compare_no_strategies(capsys):
    usage_error(capsys, ['compare', '--strategies'], '--strategies', 'expected at least one argument')

def test_not_an_integer(capsys, tmp_path):
    usage_error(capsys, ['run', '--out', str(tmp_path/'o'), '--steps', '1.5'], '--steps', "invalid int value: '1.5'")

@pytest.mark.parametrize('spec', ['3', 'a:b', '1:2:3', '-1:0'])
def test_protected_head_format(capsys, tmp_path, spec):
    error_line(capsys, ['run', '--out', str(tmp_path/'o'), '--protected', '0:1', f'--protected={spec}'],
               '--protected must be heads as LAYER:HEAD', f'got {spec!r}')

def test_protected_head_negative_as_its_own_word(capsys, tmp_path):
    "`--protected -1:0` looks like a flag to argparse: its own usage error, naming the word."
    usage_error(capsys, ['run', '--out', str(tmp_path/'o'), '--protected', '-1:0'], 'unrecognized arguments: -1:0')

@pytest.mark.parametrize('seed', ['-1', str(2**32)])
def test_seed_out_of_range(capsys, tmp_path, seed):
    error_line(capsys, ['run', '--out', str(tmp_path/'o'), '--seed', seed], '--seed must be an integer in [0, 4294967295]', f'got {seed}')

def test_eval_seed_out_of_range(capsys):
    error_line(capsys, ['eval', '--seed', str(2**32)], '--seed must be an integer in [0, 4294967295]')

def test_block_limit_zero(capsys, tmp_path):
    error_line(capsys, ['run', '--out', str(tmp_path/'o'), '--max-blocks', '0'], '--max-blocks must be an integer >= 1, got 0',
               'leave the flag out')

def test_eval_block_limit_zero(capsys):
    error_line(capsys, ['eval', '--max-blocks', '0'], '--max-blocks must be an integer >= 1, got 0')

def test_batch_size_zero(capsys, tmp_path):
    error_line(capsys, ['run', '--out', str(tmp_path/'o'), '--batch-size', '0'], '--batch-size must be an integer >= 1, got 0')

def test_block_size_one(capsys):
    error_line(capsys, ['eval', '--block-size', '1'], '--block-size must be an integer >= 2, got 1')

def test_compare_eval_blocks_zero(capsys):
    error_line(capsys, ['compare', '--eval-blocks', '0'], '--eval-blocks must be an integer >= 1, got 0')

def test_compare_score_batches_zero(capsys):
    error_line(capsys, ['compare', '--score-batches', '0'], '--score-batches must be an integer >= 1, got 0')

def test_compare_level_out_of_range(capsys):
    error_line(capsys, ['compare', '--level', '1.0'], '--level must be in [0, 1)', 'got 1.0')

def test_compare_negative_learn_steps(capsys):
    error_line(capsys, ['compare', '--learn-steps', '-5'], '--learn-steps must be an integer >= 0, got -5')

def test_device_cuda_without_gpu(capsys, tmp_path):
    import torch
    if torch.cuda.is_available(): pytest.skip('a GPU is visible here')
    error_line(capsys, ['run', '--out', str(tmp_path/'o'), '--device', 'cuda'], "--device 'cuda'", 'no GPU is visible')

def test_device_name_unknown(capsys):
    error_line(capsys, ['eval', '--device', 'gpu0'], "--device 'gpu0' is not a device", 'cpu, cuda')

# --- the run folder ---------------------------------------------------------------------------------------------------

def test_out_empty_string(capsys):
    error_line(capsys, ['run', '--out', ''], '--out is empty')

def test_out_is_a_file(capsys, tmp_path):
    f = tmp_path/'notes.txt'; f.write_text('my notes')
    error_line(capsys, ['run', '--out', str(f)], 'is a file, not a folder')
    assert f.read_text() == 'my notes'

def test_out_not_empty(capsys, run_copy):
    before = tree_hash(run_copy)
    error_line(capsys, ['run', '--out', str(run_copy), *TINY_RUN], 'is not empty', '--resume', '--overwrite')
    assert tree_hash(run_copy) == before

def test_resume_and_overwrite(capsys, run_copy):
    before = tree_hash(run_copy)
    error_line(capsys, ['run', '--out', str(run_copy), '--resume', '--overwrite'], '--resume and --overwrite')
    assert tree_hash(run_copy) == before

def test_resume_empty_folder(capsys, tmp_path):
    error_line(capsys, ['run', '--out', str(tmp_path), '--resume'], 'run.json does not exist')
    assert list(tmp_path.iterdir()) == []

def test_resume_missing_checkpoint(capsys, run_copy):
    before = tree_hash(run_copy)
    error_line(capsys, ['run', '--out', str(run_copy), '--resume', str(run_copy/'cycle-7')], 'cycle-7', 'nor a checkpoint folder (extra.json)')
    assert tree_hash(run_copy) == before

def test_overwrite_deletes_nothing_when_a_later_check_fails(capsys, run_copy, text_file):
    "--overwrite deletes the old run only when the new one starts: a block size too long for the model keeps it."
    before = tree_hash(run_copy)
    error_line(capsys, ['run', '--out', str(run_copy), '--overwrite', '--corpus', str(text_file), '--block-size', '300'],
               '--block-size 300 is longer than the context of sentinel-tiny (256 tokens)', alone=False)
    assert tree_hash(run_copy) == before

def test_overwrite_refuses_foreign_files(capsys, run_copy, text_file):
    (run_copy/'my-notes.txt').write_text('keep me')
    before = tree_hash(run_copy)
    error_line(capsys, ['run', '--out', str(run_copy), '--overwrite', '--corpus', str(text_file), *TINY_RUN], 'my-notes.txt',
               'nothing was deleted')                                   # alone: refused before the model loads
    assert tree_hash(run_copy) == before

def test_overwrite_refusal_comes_before_the_model_loads(capsys, run_copy, monkeypatch):
    "The dry run of the run folder comes first: a refused --overwrite never reaches the model (or the data)."
    def must_not_load(*a, **k): raise AssertionError('the model was loaded before the run folder was checked')
    monkeypatch.setattr(cli, 'load_model_for', must_not_load)
    (run_copy/'data').mkdir(); (run_copy/'data'/'x.bin').write_bytes(b'1')
    before = tree_hash(run_copy)
    error_line(capsys, ['run', '--out', str(run_copy), '--overwrite', *TINY_RUN], 'data/', 'nothing was deleted')
    assert tree_hash(run_copy) == before

def test_out_inside_a_file(capsys, tmp_path):
    f = tmp_path/'notes.txt'; f.write_text('my notes')
    error_line(capsys, ['run', '--out', str(f/'run')], 'cannot create the run folder', 'notes.txt is a file, not a folder')
    assert f.read_text() == 'my notes' and sorted(tmp_path.iterdir()) == [f]

def test_new_out_is_not_created_by_a_refused_run(capsys, tmp_path, text_file):
    "A missing --out is only checked (its parent is writable) until the run starts: a later refusal leaves no folder."
    out = tmp_path/'a'/'b'
    error_line(capsys, ['run', '--out', str(out), '--corpus', str(text_file), *TINY_RUN, '--block-size', '300'],
               '--block-size 300 is longer than the context', alone=False)
    assert not (tmp_path/'a').exists()

def test_resume_a_folder_that_is_not_a_checkpoint(capsys, run_copy):
    (run_copy/'notes').mkdir(); (run_copy/'notes'/'a.txt').write_text('mine')
    before = tree_hash(run_copy)
    error_line(capsys, ['run', '--out', str(run_copy), '--resume', str(run_copy/'notes')], 'notes', 'nor a checkpoint folder (extra.json)')
    assert tree_hash(run_copy) == before

def test_resume_the_run_folder_itself(capsys, run_copy):
    "--resume OUT (the run folder, not one of its checkpoints) is --resume alone: the run continues from its newest checkpoint."
    n_events = len((run_copy/'events.jsonl').read_text().splitlines())
    rc = main(['run', '--out', str(run_copy), '--resume', str(run_copy)])
    err = capsys.readouterr().err
    assert rc == 0, err
    kinds = [json.loads(l)['kind'] for l in (run_copy/'events.jsonl').read_text().splitlines()]
    assert 'resume' in kinds[n_events - 2:] and kinds[-1] == 'end', kinds      # the finished run resumed, and ended again

def test_resume_with_other_settings(capsys, run_copy, text_file):
    "Only --cycles may change on --resume: another --steps is refused, naming the difference, before any training."
    before = tree_hash(run_copy)
    error_line(capsys, ['run', '--out', str(run_copy), '--resume', '--corpus', str(text_file), *TINY_RUN, '--steps', '2'],
               'cannot resume', 'steps: 1 -> 2', alone=False)
    assert tree_hash(run_copy) == before

def test_resume_corrupt_log(capsys, run_copy, text_file):
    "The newest checkpoint damaged (same size): --resume takes the one before, saying which it passed over and why."
    log = run_copy/'cycle-1'/'log.json'
    log.write_text('{' + 'x' * (log.stat().st_size - 1))        # same size, not JSON
    rc = main(['run', '--out', str(run_copy), '--resume', '--corpus', str(text_file), *TINY_RUN, '--cycles', '1', '--no-report'])
    err = capsys.readouterr().err
    warned = [l for l in err.splitlines() if l.startswith('sentinel: warning: resuming from warmup, not from cycle-1')]
    assert rc == 0 and len(warned) == 1 and 'log.json does not match the sha256' in warned[0], err
    assert 'Traceback' not in err and 'UserWarning' not in err, err     # one line, not Python's warning format
    assert json.loads((run_copy/'cycle-1'/'log.json').read_text())['run_id']   # cycle 1 run again from warm-up, sound now

def test_resume_with_run_json_lost_rebuilds_it(capsys, run_copy, text_file):
    "A lost run.json: --resume rebuilds it from the checkpoints (settings included) instead of advising --overwrite."
    lost = json.loads((run_copy/'run.json').read_text())
    (run_copy/'run.json').unlink()
    shutil.rmtree(run_copy/'cycle-1')                               # work left: cycle 1 from the warm-up checkpoint
    rc = main(['run', '--out', str(run_copy), '--resume', '--corpus', str(text_file), '--no-report'])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert 'sentinel: warning:' in err and 'run.json was missing: rebuilt from' in err, err
    rebuilt = json.loads((run_copy/'run.json').read_text())
    assert rebuilt['run_id'] == lost['run_id'] and rebuilt['data'] == lost['data'] and rebuilt['corpus'] == lost['corpus']
    assert 'cannot be checked' not in err                           # the checkpoints keep a copy of run.json: nothing is guessed

def test_resume_truncated_checkpoint(capsys, run_copy, text_file):
    weights = run_copy/'cycle-1'/'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:1000])
    before = tree_hash(run_copy)
    line = error_line(capsys, ['run', '--out', str(run_copy), '--resume', str(run_copy/'cycle-1'), '--corpus', str(text_file),
                               *TINY_RUN], alone=False)
    assert 'checkpoint' in line, line
    assert tree_hash(run_copy) == before

def test_resume_checkpoint_of_another_model(capsys, other_model_run, text_file):
    "Resuming a tiny random GPT-2's checkpoint with sentinel-tiny: refused (after the load, before any training), nothing written."
    before = tree_hash(other_model_run)
    line = error_line(capsys, ['run', '--out', str(other_model_run), '--resume', str(other_model_run/'cycle-1'),
                               '--model', 'sentinel-tiny', '--corpus', str(text_file), *TINY_RUN], 'cannot resume', 'model.name', alone=False)
    assert 'sentinel-tiny' in line, line
    assert tree_hash(other_model_run) == before

# --- corpus and model ---------------------------------------------------------------------------------------------------

def test_missing_corpus_path(capsys):
    error_line(capsys, ['eval', '--corpus', './no/such/plays.txt'], 'corpus path does not exist', 'plays.txt')

def test_corpus_folder_without_text_files(capsys, tmp_path):
    (tmp_path/'README.md').write_text('not a .txt')
    error_line(capsys, ['eval', '--corpus', str(tmp_path)], 'no .txt files in folder', str(tmp_path))

def test_empty_corpus_file(capsys, tmp_path):
    f = tmp_path/'empty.txt'; f.write_text('')
    error_line(capsys, ['eval', '--corpus', str(f)], 'corpus file is empty', 'empty.txt')

def test_unknown_split(capsys):
    error_line(capsys, ['eval', '--split', 'dev'], "has no split 'dev'", 'train, validation, test')

def test_binary_corpus(capsys, tmp_path):
    blob = tmp_path/'weights.bin'; blob.write_bytes(bytes(range(256)) * 64)
    error_line(capsys, ['eval', '--corpus', str(blob)], 'weights.bin is not text', 'NUL bytes')

def test_hub_dataset_unreachable(capsys, monkeypatch):
    "owner/name goes to the hub (unreachable here: stand-in), and the error names the dataset and the alternatives."
    def unreachable(name, config=None, **kw): raise ConnectionError('cannot reach huggingface.co')
    monkeypatch.setattr('sentinel_nb.data.load_dataset', unreachable)
    error_line(capsys, ['eval', '--corpus', 'karpathy/tiny_shakespeare'], "Hugging Face dataset 'karpathy/tiny_shakespeare'",
               'cannot reach', 'a .txt/.jsonl file')

def test_hub_dataset_routing(monkeypatch):
    calls = []
    def fake(name, config=None, **kw):
        from datasets import Dataset, DatasetDict
        calls.append((name, config)); return DatasetDict({'train': Dataset.from_dict({'text': [f'doc {i}' for i in range(20)]})})
    monkeypatch.setattr('sentinel_nb.data.load_dataset', fake)
    load_corpus('owner/name'); load_corpus('owner/name:config'); load_corpus('imdb')
    assert calls == [('owner/name', None), ('owner/name', 'config'), ('imdb', None)]

def test_five_paragraphs_work(capsys, tmp_path):
    "A 5-paragraph text used to fail ('validation has no text'); now each split gets a paragraph."
    words = 'the king hath sent for you and bids you come to court at once my lord'.split()
    f = tmp_path/'five.txt'
    f.write_text('\n\n'.join(' '.join(words[(i + j) % len(words)] for j in range(60)) for i in range(5)))
    assert main(['eval', '--corpus', str(f), '--block-size', '16', '--split', 'validation']) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)['n_tokens'] > 0 and 'sentinel: error' not in err

def test_split_shorter_than_block(capsys, tmp_path):
    f = tmp_path/'short.txt'; f.write_text('\n\n'.join(f'Paragraph {i}, a few words long.' for i in range(5)))
    error_line(capsys, ['eval', '--corpus', str(f), '--block-size', '128'], "the 'train' split has", 'fewer than --block-size=128',
               'use a smaller block size (--block-size', alone=False)

def test_block_size_longer_than_context(capsys, text_file):
    error_line(capsys, ['eval', '--corpus', str(text_file), '--block-size', '512'],
               '--block-size 512 is longer than the context of sentinel-tiny (256 tokens): use --block-size 256 or less', alone=False)

def test_protected_head_outside_model(capsys, tmp_path, text_file):
    error_line(capsys, ['run', '--out', str(tmp_path/'o'), '--corpus', str(text_file), '--protected', '9:0', *TINY_RUN],
               'protected head 9:0 is outside', '4 layers x 8 heads', alone=False)

def test_model_name_invalid(capsys):
    error_line(capsys, ['eval', '--model', 'my model'], "--model 'my model' is not an offline name", 'sentinel-tiny')

def test_model_unknown_on_the_hub(capsys, monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)   # no retries against an unreachable hub
    error_line(capsys, ['eval', '--model', 'nobody/no-such-model'], "Could not load 'nobody/no-such-model'", 'offline name',
               alone=False)

def test_model_folder_without_config(capsys, tmp_path):
    (tmp_path/'pytorch_model.bin').write_bytes(b'0')
    error_line(capsys, ['eval', '--model', str(tmp_path)], f"--model '{tmp_path}' is a folder without config.json", 'save_pretrained', 'sentinel-tiny')

def test_model_file_that_is_not_gguf(capsys, tmp_path):
    f = tmp_path/'model.bin'; f.write_bytes(b'0')
    error_line(capsys, ['eval', '--model', str(f)], 'is a file but not a .gguf model', 'save_pretrained')

def test_model_path_missing(capsys):
    error_line(capsys, ['eval', '--model', './models/missing.gguf'], 'no model at', 'missing.gguf')

# --- how errors are reported -----------------------------------------------------------------------------------------

def test_debug_shows_traceback(capsys):
    rc = main(['--debug', 'eval', '--max-blocks', '0'])
    err = capsys.readouterr().err
    assert rc == 2 and 'Traceback' in err and err.splitlines()[-1].startswith('sentinel: error: --max-blocks'), err

def test_internal_error(capsys, monkeypatch):
    def broken(*a, **k): raise RuntimeError('index out of range in the packer')
    monkeypatch.setattr(cli, 'load_corpus', broken)
    error_line(capsys, ['eval'], 'internal error: RuntimeError: index out of range in the packer', 'run again with --debug', code=1)

def test_ctrl_c_outside_a_run(capsys, monkeypatch):
    def interrupted(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(cli, 'load_corpus', interrupted)
    assert main(['eval']) == 130
    assert capsys.readouterr().err.splitlines() == ['sentinel: interrupted (Ctrl-C)']

def test_debug_after_the_subcommand(capsys):
    rc = main(['eval', '--max-blocks', '0', '--debug'])
    assert rc == 2 and 'Traceback' in capsys.readouterr().err

def test_ctrl_c_during_a_run(capsys, tmp_path, text_file, monkeypatch):
    "Ctrl-C inside a run stops it at the next step with a checkpoint; the command says how to continue and exits 130."
    import signal, sentinel_nb.cycle as cycle
    real = cycle.run_plasticity
    def press_ctrl_c_at_first_step(*a, **kw):
        return real(*a, on_step=lambda rec: signal.raise_signal(signal.SIGINT), **kw)
    monkeypatch.setattr(cycle, 'run_plasticity', press_ctrl_c_at_first_step)
    out = tmp_path/'run'
    rc = main(['run', '--out', str(out), '--corpus', str(text_file), *TINY_RUN, '--steps', '3'])
    o, err = capsys.readouterr()
    assert rc == 130, err
    assert f'continue it with: sentinel run --out {out} --resume' in err.splitlines()[-1], err
    assert json.loads(o)['stopped'] == cycle.INTERRUPTED and (out/'stopped'/'extra.json').is_file()
