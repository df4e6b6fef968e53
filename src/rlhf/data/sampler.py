"""Random order over a dataset: one shuffled index stream, one train/eval split and one length-bucketed batch
order for every trainer."""
from __future__ import annotations

from typing import Sequence, TypeVar

import torch

T = TypeVar("T")


class IndexStream:
    """Indices 0..n-1 in epochs of fresh random permutations, read in order across epoch boundaries.
    The generator is used for nothing else, so the stream depends only on its seed; `state_dict` holds
    what a checkpoint needs to continue it exactly."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.order: list[int] = []
        self.position, self.epoch = 0, -1

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.position >= len(self.order):
                self.order, self.position = torch.randperm(self.n, generator=self.generator).tolist(), 0
                self.epoch += 1
            chunk = self.order[self.position: self.position + k - len(out)]
            out += chunk
            self.position += len(chunk)
        return out

    def next_epoch(self) -> list[int]:
        """The next whole permutation (the rest of the current one is skipped)."""
        self.position = len(self.order)
        return self.take(self.n)

    def state_dict(self) -> dict:
        return {"order": self.order, "position": self.position, "epoch": self.epoch,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.position, self.epoch = list(state["order"]), state["position"], state["epoch"]
        self.generator.set_state(state["generator"])


def train_eval_split(items: Sequence[T], eval_fraction: float, generator: torch.Generator,
                     min_eval: int = 0) -> tuple[list[T], list[T]]:
    """(train, eval): a random permutation, its first int(n * eval_fraction) (at least min_eval) items held out."""
    order = torch.randperm(len(items), generator=generator).tolist()
    n_eval = max(min_eval, int(len(items) * eval_fraction))
    return [items[i] for i in order[n_eval:]], [items[i] for i in order[:n_eval]]


class PromptSampler:
    """Batches of prompts for RL: an IndexStream over the prompt set, each prompt encoded once."""

    def __init__(self, prompts: list, encode, generator: torch.Generator):
        self.prompts, self.encoded = prompts, [encode(p) for p in prompts]
        self.stream = IndexStream(len(prompts), generator)

    def batch(self, n: int) -> tuple[list[int], list[list[int]]]:
        """(indices into prompts, their token ids)."""
        idx = self.stream.take(n)
        return idx, [self.encoded[i] for i in idx]


def batch_order(lengths: list[int], batch_size: int, steps: int, seed: int, buckets: int = 32) -> list[list[int]]:
    """`steps` batches of `batch_size` indices: epochs of random permutations, cut into windows of
    `buckets` batches; within a window the indices are sorted by length before being cut into batches
    and the batches are shuffled, so each batch holds similar lengths (less padding) while every
    index is still seen once per epoch and batch order stays random."""
    rng = torch.Generator().manual_seed(seed)
    need = steps * batch_size
    stream = IndexStream(len(lengths), rng).take(need)
    out: list[list[int]] = []
    window = batch_size * max(1, buckets)
    for w in range(0, need, window):
        chunk = stream[w:w + window]
        if buckets > 1:
            chunk = sorted(chunk, key=lambda i: lengths[i])
        group = [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
        if buckets > 1:
            group = [group[i] for i in torch.randperm(len(group), generator=rng).tolist()]
        out += group
    return out
