"Random token blocks and DataLoaders for the tests that make real (tiny) plasticity runs: one definition for all of them."
import torch
from torch.utils.data import DataLoader
from sentinel_nb.models import TINY_VOCAB
from sentinel_nb.data import collate_blocks

def blocks(n: int, seed: int, length: int = 16) -> list[dict]:
    "`n` seeded blocks of `length` random token ids (as `pack_blocks` rows)."
    g = torch.Generator().manual_seed(seed)
    return [{'input_ids': torch.randint(1, TINY_VOCAB, (length,), generator=g).tolist()} for _ in range(n)]

def tiny_data(train_seed: int = 0, batch_size: int = 4, length: int = 16) -> dict:
    "`{'train', 'validation'}` loaders over 32 and 8 blocks, as `get_dataloaders` returns them (train unshuffled)."
    return {'train': DataLoader(blocks(32, train_seed, length), batch_size=batch_size, collate_fn=collate_blocks),
            'validation': DataLoader(blocks(8, 1, length), batch_size=4, collate_fn=collate_blocks)}
