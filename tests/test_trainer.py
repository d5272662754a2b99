"PlasticityCallback in a real transformers.Trainer: the standalone runner's decisions, exact masks, the run folder, stops and errors."
import json, tempfile, warnings
import pytest, torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging as hf_logging
from sentinel_nb.models import tiny_model, head_weight_slices
from sentinel_nb.data import collate_blocks
from sentinel_nb.train import lr_factor
from sentinel_nb.callbacks import Callback
from sentinel_nb.cycle import run_plasticity, seeded_loader
from sentinel_nb.log import RunFolderError, lock_holder
from sentinel_nb.trainer import PlasticityCallback

from tiny_data import tiny_data   # shared tiny loaders (tests/tiny_data.py)

@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1); hf_logging.set_verbosity_error(); yield; torch.set_num_threads(n)

DATA = tiny_data()
TRAIN, VALID = DATA['train'].dataset, DATA['validation'].dataset
SMALL = dict(cycles=2, steps=4, warmup_max_steps=4, warmup_window=4, score_batches=1, eval_batches=1, ramp_steps=2,
             boost_steps=3, prune_level=0.25, grow_ratio=0.5, seed=0)
LR = 1e-3

def gpt2(dropout: float = 0.1):
    m = tiny_model('gpt2', n_layer=2, n_head=4, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    m.loss_type = 'ForCausalLM'    # else the Trainer divides GPT-2's summed loss by every label, not the 15 shifted ones per block
    return m

def args(max_steps: int = 12, **kw) -> TrainingArguments:
    return TrainingArguments(tempfile.mkdtemp(), report_to=[], use_cpu=True, save_strategy='no', logging_strategy='no',
                             max_steps=max_steps, per_device_train_batch_size=4, per_device_eval_batch_size=4,
                             learning_rate=LR, seed=0, disable_tqdm=True, **kw)

# --- the runner's batch order and training recipe, given to a Trainer ---------------------------------------------
def runner_order(seed: int, batches: int) -> list[int]:
    "Indices of TRAIN in the order a runner phase with `seed` reads them (its FineTuner prepares `seeded_loader(train, seed)`)."
    key = {tuple(r['input_ids']): i for i, r in enumerate(TRAIN)}
    out = []
    for b in Accelerator(cpu=True).prepare(seeded_loader(DATA['train'], seed)):
        out += [key[tuple(x)] for x in b['input_ids'].tolist()]
        if len(out) >= 4 * batches: return out[:4 * batches]

PHASES = [(0, 4), (4, 4), (8, 4)]   # (first step, steps): warm-up, learn 1, learn 2
ORDER = runner_order(0, 4) + runner_order(1 + 3, 4) + runner_order(2 + 3, 4)   # learn c: seed * 1000 + c + 3

class InRunnerOrder(Trainer):
    def _get_train_sampler(self, train_dataset=None): return ORDER

class FreshOptimizerEachPhase(TrainerCallback):
    "Each runner phase starts a new FineTuner: a new AdamW state."
    def on_step_end(self, args, state, control, optimizer=None, **kw):
        if state.global_step in [s for s, _ in PHASES[1:]]: getattr(optimizer, 'optimizer', optimizer).state.clear()

def finetuner_recipe(model):
    "FineTuner's AdamW (decay 0.01 on weights of 2+ dims) and its per-phase cosine schedule with min(10, steps // 5) warm-up steps."
    decay = [p for p in model.parameters() if p.dim() >= 2]; rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.01}, {'params': rest, 'weight_decay': 0.}], lr=LR)
    def factor(k):
        s, n = next((s, n) for s, n in PHASES if s <= k < s + n) if k < 12 else (12, 1)
        return lr_factor(k - s, n, min(10, max(1, n // 5)), 'cosine')
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

@pytest.mark.parametrize('extra,trainer_args', [({}, {}), ({'distill': True}, {}), ({'mixed_precision': 'bf16'}, {'bf16': True}),
                                                ({'mixed_precision': 'fp16'}, {'fp16': True})], ids=['plain', 'distill', 'bf16', 'fp16'])
def test_same_run_as_the_standalone_runner(extra, trainer_args, monkeypatch):
    # a Trainer with bf16/fp16 leaves $ACCELERATE_MIXED_PRECISION and accelerate's process-wide state set to it, which a
    # later FineTuner's Accelerator inherits (and refuses): clear both, as a fresh process would have them
    monkeypatch.delenv('ACCELERATE_MIXED_PRECISION', raising=False)
    AcceleratorState._reset_state(reset_partial_state=True)
    # dropout off: the runner and the Trainer draw dropout masks from different random streams
    log = run_plasticity(gpt2(0.), DATA, progress=False, dense_control=False, lr=LR, attention='eager', **SMALL, **extra)
    model = gpt2(0.)
    cb = PlasticityCallback(eval_dataset=VALID, attention='eager', **SMALL, **{k: v for k, v in extra.items() if k != 'mixed_precision'})
    trainer = InRunnerOrder(model=model, args=args(**trainer_args), train_dataset=TRAIN, data_collator=collate_blocks,
                            callbacks=[cb, FreshOptimizerEachPhase()], optimizers=finetuner_recipe(model))
    trainer.train()
    kinds = lambda l: [e.kind for e in l.events]
    assert kinds(cb.log) == kinds(log)
    for kind in ('prune', 'grow'):
        for a, b in zip(log.filter(kind), cb.log.filter(kind), strict=True):
            assert [list(h) for h in a.heads] == [list(h) for h in b.heads], (kind, a.cycle)
    # fp16 (on the CPU here): the runner's FineTuner and the Trainer (accelerate) round differently inside autocast; same
    # decisions, scores within 1.2e-3, perplexities within 4e-4 and losses 6e-5 (relative; measured); the rest is exact
    tol = dict(abs=3e-3, rel=1e-3, loss=2e-4) if extra.get('mixed_precision') == 'fp16' else dict(abs=1e-6, rel=1e-6, loss=1e-5)
    for a, b in zip(log.filter('prune'), cb.log.filter('prune')):
        for k in a.scores: assert torch.as_tensor(b.scores[k]).flatten().tolist() == pytest.approx(torch.as_tensor(a.scores[k]).flatten().tolist(), abs=tol['abs']), (a.cycle, k)
    for kind in ('warmup', 'learn'):
        for a, b in zip(log.filter(kind), cb.log.filter(kind), strict=True):
            assert b.metrics_after['perplexity'] == pytest.approx(a.metrics_after['perplexity'], rel=tol['rel']), (kind, a.cycle)
            assert b.info['losses'] == pytest.approx(a.info['losses'], rel=tol['loss'])
            assert b.step == a.step
    assert cb.log.events[0].info['config']['mixed_precision'] == extra.get('mixed_precision', 'no')   # the Trainer's, resolved

class Snapshot(Callback):
    "The weight slices of each head as it is pruned."
    def __init__(self): self.at_prune = {}
    def on_event(self, run, e):
        for l, h in (e.heads if e.kind == 'prune' else []):
            self.at_prune[l, h] = {k: s.of().detach().clone() for k, s in head_weight_slices(run.model, l, h).parts.items()}

@pytest.mark.parametrize('scaler', [True, False], ids=['scaler', 'no-scaler-control'])
def test_pruned_heads_bit_identical_under_adamw_weight_decay(scaler):
    snap, model = Snapshot(), gpt2()
    trainer = Trainer(model=model, args=args(weight_decay=0.1), train_dataset=TRAIN, eval_dataset=VALID, data_collator=collate_blocks)
    cb = PlasticityCallback(callbacks=[snap], **{**SMALL, 'grow_ratio': 0.0}).attach(trainer)
    if not scaler:                                      # the control: without the update scaler, weight decay moves them
        class Unhook(TrainerCallback):
            def on_train_begin(self, *a, **kw): cb.scaler.remove()
        trainer.add_callback(Unhook())
    trainer.train()
    assert len(snap.at_prune) == 4 and not cb.gates.state.active.all()
    same = [torch.equal(s.of(), snap.at_prune[l, h][k]) for l, h in snap.at_prune for k, s in head_weight_slices(model, l, h).parts.items()]
    assert all(same) if scaler else not any(same)

def test_run_folder_reads_as_a_report_and_in_the_workbench(tmp_path):
    from sentinel_nb.report import export_report
    from sentinel_nb.workbench import Workbench
    out = tmp_path/'run'
    trainer = Trainer(model=gpt2(), args=args(weight_decay=0.1), train_dataset=TRAIN, eval_dataset=VALID, data_collator=collate_blocks)
    cb = PlasticityCallback(out, **SMALL).attach(trainer)
    trainer.train()
    assert sorted(p.name for p in out.iterdir()) == ['cycle-1', 'cycle-2', 'events.jsonl', 'log.json', 'run.json', 'warmup']
    assert lock_holder(out) is None
    info = json.loads((out/'run.json').read_text())
    assert info['config']['lr'] == LR and info['data']['trainer']['weight_decay'] == 0.1
    html = export_report(out, out/'report.html')
    assert html.is_file() and html.stat().st_size > 10_000
    wb = Workbench.open(out)
    assert wb.state == 'opened' and [e.kind for e in wb.log.events] == [e.kind for e in cb.log.events]
    assert [[list(h) for h in e.heads] for e in wb.log.filter('prune')] == [[list(h) for h in e.heads] for e in cb.log.filter('prune')]
    assert f'{len(cb.log.events)} events' in wb.message.value

def test_a_trainer_that_ends_early_stops_the_run_with_a_checkpoint(tmp_path):
    out = tmp_path/'run'
    trainer = Trainer(model=gpt2(), args=args(max_steps=6), train_dataset=TRAIN, eval_dataset=VALID, data_collator=collate_blocks)
    cb = PlasticityCallback(out, **SMALL).attach(trainer)
    with pytest.warns(UserWarning, match=r'max_steps=12'): trainer.train()
    stop = cb.log.filter('stop')[0]
    assert 'the Trainer ended at step 6' in stop.info['reason'] and stop.info['phase'] == 'learn' and len(stop.info['losses']) == 2
    assert (out/'stopped'/'model.safetensors').is_file() and lock_holder(out) is None and trainer.state.global_step == 6

def test_what_a_user_can_get_wrong_is_refused_before_any_work(tmp_path):
    model = gpt2(); w = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model=model, args=args(), train_dataset=TRAIN, data_collator=collate_blocks,
                      callbacks=[PlasticityCallback(tmp_path/'a', **SMALL)])
    with pytest.raises(ValueError, match=r'eval_dataset=.*attach\(trainer\)'): trainer.train()
    assert not (tmp_path/'a').exists() and all(torch.equal(v, w[k]) for k, v in model.state_dict().items())
    trainer = Trainer(model=model, args=args(), train_dataset=TRAIN, eval_dataset=VALID, data_collator=collate_blocks)
    PlasticityCallback(mixed_precision='bf16', **SMALL).attach(trainer)
    with pytest.raises(ValueError, match="the Trainer trains in 'no'"): trainer.train()
    (tmp_path/'b').mkdir(); (tmp_path/'b'/'events.jsonl').write_text('')
    trainer = Trainer(model=model, args=args(), train_dataset=TRAIN, eval_dataset=VALID, data_collator=collate_blocks)
    PlasticityCallback(tmp_path/'b', **SMALL).attach(trainer)
    with pytest.raises(RunFolderError): trainer.train()
    from sentinel_nb.gates import HeadGates
    with pytest.raises(ValueError): HeadGates.of(model)                 # the refused run took its gates off again
    assert all(torch.equal(v, w[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match='learning_rate'): PlasticityCallback(lr=1e-3)
    with pytest.raises(ValueError, match='prune_level must be'): PlasticityCallback(prune_level=2.0)
