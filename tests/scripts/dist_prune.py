"""Run under `torchrun --nproc_per_node 2`: each process scores heads on its own batches; the averaged scores must be
identical everywhere, so every process prunes the same heads; then a few FineTuner steps in lockstep."""
import json, sys
import torch
from accelerate import Accelerator
from sentinel_nb.models import tiny_model, TINY_VOCAB, head_weight_slices
from sentinel_nb.gates import HeadGates
from sentinel_nb.importance import head_importance
from sentinel_nb.prune import prune_heads
from sentinel_nb.train import FineTuner
from sentinel_nb.data import collate_blocks
from torch.utils.data import DataLoader

acc = Accelerator(cpu=True)
rank = acc.process_index
model = tiny_model('gpt2')                          # same weights on every process (seeded)
g = HeadGates(model).install()
gen = torch.Generator().manual_seed(100 + rank)     # different data on each process
batches = [{'input_ids': (ids := torch.randint(1, TINY_VOCAB, (2, 12), generator=gen)), 'attention_mask': torch.ones_like(ids)}
           for _ in range(2)]
local = head_importance(model, batches, methods=('gradient', 'entropy', 'random'), seed=0)
avg = head_importance(model, batches, methods=('gradient', 'entropy', 'random'), seed=0, accelerator=acc)
pr = prune_heads(g, avg, level=0.25, strategy='gradient')
rows = [{'input_ids': torch.randint(1, TINY_VOCAB, (12,), generator=gen).tolist()} for _ in range(8)]
frozen = {h: [s.of().clone() for s in head_weight_slices(model, *h).parts.values()] for h in pr.heads}
tuner = FineTuner(model, g, lr=1e-3, accelerator=acc, stability_level=1, warmup_steps=1)
res = tuner.train(DataLoader(rows, batch_size=2, collate_fn=collate_blocks), 3); tuner.close()
checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
still = all(torch.equal(a, s.of()) for h, old in frozen.items() for a, s in zip(old, head_weight_slices(model, *h).parts.values()))
out = {'rank': rank, 'world': acc.num_processes, 'local_gradient': local['gradient'].tolist(),
       'avg_gradient': avg['gradient'].tolist(), 'pruned': pr.heads, 'steps': res['steps'], 'checksum': checksum, 'pruned_frozen': still}
with open(f"{sys.argv[1]}/rank{rank}.json", 'w') as f: json.dump(out, f)
