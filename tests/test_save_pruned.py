"`sentinel run --save-pruned DIR`: the run's last state, physically pruned, saved and loaded back with `load_model(DIR)`."
import json
import pytest, torch
from sentinel_nb.cli import main
from sentinel_nb.models import head_counts
from sentinel_nb.loading import load_model
from sentinel_nb.views import load_checkpoint_model
from sentinel_nb.physical import layout_of

RUN = ['--model', 'sentinel-tiny', '--corpus', 'shakespeare', '--cycles', '1', '--steps', '2', '--warmup-max-steps', '0',
       '--block-size', '32', '--batch-size', '2', '--max-blocks', '8', '--eval-batches', '1', '--score-batches', '1',
       '--max-new-tokens', '2', '--no-report']

def test_run_saves_the_pruned_model_and_it_loads_back(tmp_path, capsys):
    out, saved = tmp_path/'run', tmp_path/'pruned'
    assert main(['run', '--out', str(out), '--save-pruned', str(saved), *RUN]) == 0
    res, err = capsys.readouterr()
    pruned = json.loads(res)['pruned_model']
    assert f"pruned model saved in {saved}" in err and pruned['parameters'] < pruned['parameters_before']
    small, tok = load_model(saved)                                   # from those files alone
    masked = load_checkpoint_model(out/'cycle-1', 'sentinel-tiny')   # the same run's last checkpoint, heads gated
    L, H, _, _ = head_counts(masked)
    active = json.loads((out/'cycle-1'/'head_state.json').read_text())['active']
    assert pruned['heads'] == sum(map(sum, active)) < L * H
    assert [sorted(h for h in layer if h >= 0) for layer in layout_of(small).heads] == \
           [[h for h in range(H) if active[l][h]] for l in range(L)]    # the heads that live are the run's active ones
    ids = torch.tensor([tok('To be, or not to be, that is the question')['input_ids']])
    with torch.no_grad(): diff = (small(ids).logits - masked(ids).logits).abs().max().item()
    assert diff <= 1e-5, diff
    assert sum(p.numel() for p in small.parameters()) == pruned['parameters']

def test_a_physical_run_saves_the_model_it_already_is(tmp_path, capsys):
    out, saved = tmp_path/'run', tmp_path/'pruned'
    assert main(['run', '--out', str(out), '--physical', '--save-pruned', str(saved), *RUN]) == 0
    res, err = capsys.readouterr()
    pruned = json.loads(res)['pruned_model']
    assert ' parameters)' in err and (out/'cycle-1'/'head_layout.json').exists()   # the run shrank the model as it went
    small, _ = load_model(saved)
    assert layout_of(small) == layout_of(load_checkpoint_model(out/'cycle-1', 'sentinel-tiny'))
    assert sum(p.numel() for p in small.parameters()) == pruned['parameters']
    # the message compares with the model the run started from (not with the already-pruned model: "(0 removed)")
    full = sum(p.numel() for p in load_model('sentinel-tiny')[0].parameters())
    assert pruned['parameters_before'] == full > pruned['parameters']
    assert (f"{pruned['parameters']:,} parameters, {full - pruned['parameters']:,} fewer than the {full:,} the run started with"
            in err), err

def test_save_pruned_into_a_full_folder_is_refused_before_the_run(tmp_path, capsys):
    full = tmp_path/'full'; full.mkdir(); (full/'x.txt').write_text('mine')
    assert main(['run', '--out', str(tmp_path/'run'), '--save-pruned', str(full), *RUN]) == 2
    assert 'is not empty: give a new or empty folder' in capsys.readouterr().err
    assert not (tmp_path/'run').exists()
