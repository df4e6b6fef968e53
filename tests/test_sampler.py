"""data/sampler.py's length-bucketed batch order (the reward model's and DPO's): every index once per epoch,
similar lengths within a batch, the same order for the same seed."""
from __future__ import annotations

import random

from rlhf.data.sampler import batch_order


def test_batch_order_covers_every_index_once_per_epoch_with_similar_lengths():
    lengths = [random.Random(i).randint(1, 500) for i in range(96)]
    batches = batch_order(lengths, batch_size=8, steps=24, seed=3, buckets=4)  # 24 * 8 = two epochs of 96
    assert len(batches) == 24 and all(len(b) == 8 for b in batches)
    flat = [i for b in batches for i in b]
    assert sorted(flat[:96]) == list(range(96)) and sorted(flat[96:]) == list(range(96))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    plain = batch_order(lengths, batch_size=8, steps=24, seed=3, buckets=1)  # no buckets: random batches
    plain_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain) / len(plain)
    assert spread < plain_spread / 2  # windows of 4 batches sorted by length: far less padding
    assert batch_order(lengths, 8, 24, seed=3, buckets=4) == batches
    assert batch_order(lengths, 8, 24, seed=4, buckets=4) != batches
