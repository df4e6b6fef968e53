"""Pretraining text as packed token blocks: the pretraining stream and PPO-ptx's stream beside it."""
from __future__ import annotations

from pathlib import Path

import torch

from rlhf.data.jsonl import read_jsonl
from rlhf.data.sampler import IndexStream
from rlhf.errors import RLHFError


def load_texts(path: str | Path) -> list[str]:
    """The "text" of every line of a JSONL file."""
    docs = []
    for lineno, obj in read_jsonl(path):
        if not isinstance(obj.get("text"), str):
            raise RLHFError(f"{path}:{lineno}: missing string field 'text'")
        docs.append(obj["text"])
    return docs


def pack(tokenizer, docs: list[str], seq_len: int) -> torch.Tensor:
    """Concatenate documents separated by EOS and cut into (n, seq_len + 1) blocks."""
    stream: list[int] = []
    for d in docs:
        stream += tokenizer.encode(d, add_special_tokens=False) + [tokenizer.eos_token_id]
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise RLHFError(f"corpus too small: {len(stream)} tokens for seq_len {seq_len}")
    t = torch.tensor(stream[: n * seq_len + 1])
    return torch.stack([t[i * seq_len: (i + 1) * seq_len + 1] for i in range(n)])


class PackedStream:
    """Training batches of packed text. Every pass over the corpus shuffles the documents and packs them
    anew, so a fact is seen next to different neighbours each time: with fixed blocks a small corpus is
    learnt as memorized block sequences (train loss near 0, held-out loss high) instead of as facts."""

    def __init__(self, tokenizer, docs: list[str], seq_len: int, generator: torch.Generator):
        self.docs = [tokenizer.encode(d, add_special_tokens=False) + [tokenizer.eos_token_id] for d in docs]
        self.seq_len, self.order = seq_len, IndexStream(len(self.docs), generator)
        self.blocks, self.position, self.epoch = torch.empty(0), 0, 0
        if sum(map(len, self.docs)) <= seq_len:
            raise RLHFError(f"corpus too small: {sum(map(len, self.docs))} tokens for seq_len {seq_len}")

    def _repack(self) -> None:
        stream = [t for i in self.order.next_epoch() for t in self.docs[i]]
        n = (len(stream) - 1) // self.seq_len
        t = torch.tensor(stream[: n * self.seq_len + 1])
        self.blocks = torch.stack([t[i * self.seq_len: (i + 1) * self.seq_len + 1] for i in range(n)])
        self.position, self.epoch = 0, self.epoch + 1

    def state_dict(self) -> dict:
        return {"blocks": self.blocks, "position": self.position, "epoch": self.epoch, "order": self.order.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.blocks, self.position, self.epoch = state["blocks"], state["position"], state["epoch"]
        self.order.load_state_dict(state["order"])

    def batch(self, n: int) -> torch.Tensor:
        rows = []
        while len(rows) < n:
            if self.position >= len(self.blocks):
                self._repack()
            take = self.blocks[self.position: self.position + n - len(rows)]
            rows += list(take)
            self.position += len(take)
        return torch.stack(rows)


class PtxStream:
    """Batches of pretraining text for PPO-ptx: fixed packed blocks drawn at random with their own generator."""

    def __init__(self, tokenizer, docs: list[str], seq_len: int, seed: int):
        self.blocks = pack(tokenizer, docs, seq_len)
        self.generator = torch.Generator().manual_seed(seed + 7)

    def batch(self, n: int) -> torch.Tensor:
        return self.blocks[torch.randint(len(self.blocks), (n,), generator=self.generator)]
