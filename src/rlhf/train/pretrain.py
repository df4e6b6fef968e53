"""Stage 1: pretraining for completion. A causal LM learns the world's facts from packed text."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf.data.jsonl import read_jsonl
from rlhf.errors import RLHFError
from rlhf.models.lm import count_parameters, create_model, load_tokenizer, save_model
from rlhf.models.tokenizer import train_tokenizer
from rlhf.progress import progress_bar
from rlhf.rundir import RunDir
from rlhf.train.common import OptimConfig, make_accelerator, make_optimizer, optimizer_step
from rlhf.world import World, WorldConfig


@dataclass
class ModelConfig:
    size: str = "nano"
    arch: str = "llama"
    max_len: int = 256


@dataclass
class PretrainConfig:
    out: str = "runs/pretrain"
    seed: int = 0
    world: WorldConfig = field(default_factory=WorldConfig)
    corpus: str | None = None  # JSONL of {"text": ...}; default: the world's corpus
    tokenizer: str | None = None  # an existing tokenizer folder; default: train one on the corpus
    vocab_size: int = 2048
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 500
    batch_size: int = 32
    seq_len: int = 128
    eval_fraction: float = 0.05
    eval_every: int = 100


def load_corpus(cfg: PretrainConfig, world: World) -> list[str]:
    if cfg.corpus is None:
        return world.corpus()
    docs = []
    for lineno, obj in read_jsonl(cfg.corpus):
        if not isinstance(obj.get("text"), str):
            raise RLHFError(f"{cfg.corpus}:{lineno}: missing string field 'text'")
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
        self.seq_len, self.generator = seq_len, generator
        self.blocks, self.position, self.epoch = torch.empty(0), 0, 0
        if sum(map(len, self.docs)) <= seq_len:
            raise RLHFError(f"corpus too small: {sum(map(len, self.docs))} tokens for seq_len {seq_len}")

    def _repack(self) -> None:
        stream = [t for i in torch.randperm(len(self.docs), generator=self.generator).tolist() for t in self.docs[i]]
        n = (len(stream) - 1) // self.seq_len
        t = torch.tensor(stream[: n * self.seq_len + 1])
        self.blocks = torch.stack([t[i * self.seq_len: (i + 1) * self.seq_len + 1] for i in range(n)])
        self.position, self.epoch = 0, self.epoch + 1

    def batch(self, n: int) -> torch.Tensor:
        rows = []
        while len(rows) < n:
            if self.position >= len(self.blocks):
                self._repack()
            take = self.blocks[self.position: self.position + n - len(rows)]
            rows += list(take)
            self.position += len(take)
        return torch.stack(rows)


@torch.no_grad()
def eval_loss(model, blocks: torch.Tensor, batch_size: int) -> float:
    model.eval()
    losses = []
    for i in range(0, len(blocks), batch_size):
        b = blocks[i:i + batch_size].to(next(model.parameters()).device)
        logits = model(input_ids=b[:, :-1]).logits
        losses.append(torch.nn.functional.cross_entropy(logits.flatten(0, 1), b[:, 1:].flatten()).item())
    model.train()
    return sum(losses) / len(losses)


def run(cfg: PretrainConfig, show_progress: bool = True) -> Path:
    world = World(cfg.world)
    docs = load_corpus(cfg, world)
    rng = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(docs), generator=rng).tolist()
    n_eval = max(1, int(len(docs) * cfg.eval_fraction))
    eval_docs, train_docs = [docs[i] for i in order[:n_eval]], [docs[i] for i in order[n_eval:]]
    accelerator = make_accelerator(cfg.seed)
    with RunDir(cfg.out, cfg) as run_dir:
        if cfg.tokenizer:
            tokenizer = load_tokenizer(cfg.tokenizer)
        else:
            texts = docs + [m["content"] for d in world.demonstrations() for m in d["messages"]]
            tokenizer = train_tokenizer(texts, cfg.vocab_size)
        train_stream = PackedStream(tokenizer, train_docs, cfg.seq_len, rng)
        eval_blocks = pack(tokenizer, eval_docs, min(cfg.seq_len, 64))
        model = create_model(cfg.model.size, tokenizer, cfg.model.arch, cfg.model.max_len, cfg.seed)
        opt, sched = make_optimizer(model, cfg.optim, cfg.steps)
        model, opt = accelerator.prepare(model, opt)
        model.train()
        n_params = count_parameters(model)
        tokens_per_step = cfg.batch_size * cfg.seq_len * accelerator.num_processes
        t0, last_eval = time.time(), float("nan")
        with progress_bar("pretrain", cfg.steps, show_progress and accelerator.is_main_process) as bar:
            for step in range(cfg.steps):
                batch = train_stream.batch(cfg.batch_size).to(accelerator.device)
                logits = model(input_ids=batch[:, :-1]).logits
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
                grad_norm = optimizer_step(accelerator, model, opt, sched, loss, step, cfg.optim.grad_clip)
                row = {"loss": loss.item(), "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "tokens_per_s": tokens_per_step * (step + 1) / (time.time() - t0)}
                if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                    last_eval = eval_loss(accelerator.unwrap_model(model), eval_blocks, 64)
                    row.update(eval_loss=last_eval, eval_ppl=math.exp(last_eval))
                run_dir.log(step + 1, **row)
                bar.advance(loss=row["loss"], eval_loss=last_eval)
        elapsed = time.time() - t0
        if accelerator.is_main_process:
            save_model(accelerator.unwrap_model(model), tokenizer, run_dir.sub("model"))
            run_dir.write_summary("Pretraining", {
                "result": {"parameters": n_params, "steps": cfg.steps, "final_train_loss": row["loss"],
                           "eval_loss": last_eval, "eval_perplexity": math.exp(last_eval),
                           "tokens_seen": tokens_per_step * cfg.steps, "tokens_per_s": tokens_per_step * cfg.steps / elapsed,
                           "corpus_passes": train_stream.epoch, "eval_docs": len(eval_docs)},
                "checkpoint": "model/ (Hugging Face folder: AutoModelForCausalLM.from_pretrained)"})
    return Path(cfg.out)
