"""Stage 1: pretraining for completion. A causal LM learns the world's facts from packed text."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf import parallel
from rlhf.data.packing import PackedStream, load_texts, pack
from rlhf.data.sampler import train_eval_split
from rlhf.errors import RLHFError
from rlhf.models.lm import count_parameters, create_model, load_tokenizer, save_model
from rlhf.models.tokenizer import train_tokenizer
from rlhf.parallel import ParallelConfig
from rlhf.parallel.fsdp import gathered, prepare
from rlhf.progress import progress_bar
from rlhf.rundir import RunDir
from rlhf.train.checkpoint import TrainerState, checkpoint_dir, resume
from rlhf.train.common import OptimConfig, make_accelerator, make_optimizer, optimizer_step


@dataclass
class ModelConfig:
    size: str = "nano"  # a size of models/lm.py's table (nano, micro, ...)
    arch: str = "llama"  # llama | gpt2
    max_len: int = 256  # the position table: the longest sequence the model reads


@dataclass
class PretrainConfig:
    out: str = "runs/pretrain"  # run directory
    seed: int = 0  # seeds the split, the stream of blocks and the initial weights
    corpus: str | None = None  # JSONL of {"text": ...}; `rlhf pretrain` defaults to the world's corpus
    tokenizer: str | None = None  # an existing tokenizer folder; default: train one on the corpus
    vocab_size: int = 2048  # a new tokenizer's vocabulary
    model: ModelConfig = field(default_factory=ModelConfig)  # the model created from scratch
    optim: OptimConfig = field(default_factory=OptimConfig)  # AdamW and its schedule
    steps: int = 500  # optimizer steps
    batch_size: int = 32  # blocks per step
    seq_len: int = 128  # tokens per training block
    eval_fraction: float = 0.05  # documents held out for the evaluation loss
    eval_every: int = 100  # the held-out loss every N steps (and at the end)
    save_every: int = 0  # a checkpoint every N steps to resume from (0: only the final model)
    resume: str | None = None  # a checkpoints/step-N folder of an earlier run with the same config
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # many processes: ddp | fsdp2

    def validate(self) -> None:
        self.optim.validate()
        self.parallel.validate()


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


def run(cfg: PretrainConfig, show_progress: bool = True, *, docs: list[str] | None = None,
        tokenizer_texts: list[str] = ()) -> Path:
    """Pretrain on `docs` (or the `corpus` file); a new tokenizer also learns from `tokenizer_texts`."""
    cfg.validate()
    if cfg.corpus is not None:
        docs = load_texts(cfg.corpus)
    if not docs:
        raise RLHFError("pretrain: no text to train on; set corpus to a JSONL file of {\"text\": ...}")
    rng = torch.Generator().manual_seed(cfg.seed)
    train_docs, eval_docs = train_eval_split(docs, cfg.eval_fraction, rng, min_eval=1)
    accelerator = make_accelerator(cfg.seed)
    parallel.per_rank(cfg.batch_size, "batch_size")
    with RunDir(cfg.out, cfg) as run_dir:
        if cfg.tokenizer or cfg.resume:
            tokenizer = load_tokenizer(cfg.tokenizer or checkpoint_dir(cfg.resume, "pretraining") / "model")
        else:  # trained once (rank 0) and sent to the other processes: every rank reads the same ids
            tokenizer = parallel.broadcast_object(
                train_tokenizer(list(docs) + list(tokenizer_texts), cfg.vocab_size) if parallel.is_main() else None)
        train_stream = PackedStream(tokenizer, train_docs, cfg.seq_len, rng)
        eval_blocks = pack(tokenizer, eval_docs, min(cfg.seq_len, 64))
        model = create_model(cfg.model.size, tokenizer, cfg.model.arch, cfg.model.max_len, cfg.seed)
        model, opt, sched = prepare(accelerator, model, lambda m: make_optimizer(m, cfg.optim, cfg.steps),
                                    cfg.parallel.strategy)
        model.train()
        state = TrainerState({"model": model}, {"opt": opt, "sched": sched, "data": train_stream}, tokenizer=tokenizer)
        start, _ = resume(state, cfg.resume, "pretraining", cfg.steps)
        n_params = count_parameters(model)
        tokens_per_step = cfg.batch_size * cfg.seq_len  # the global batch
        t0, last_eval = time.time(), float("nan")
        with progress_bar("pretrain", cfg.steps - start, show_progress and accelerator.is_main_process) as bar:
            for step in range(start, cfg.steps):
                # every rank draws the global batch and keeps its slice: equal slices, so the mean over ranks
                # of the slices' mean losses (and of their gradients, as DDP/FSDP2 average them) is the global mean
                batch = parallel.shard(train_stream.batch(cfg.batch_size)).to(accelerator.device)
                logits = model(input_ids=batch[:, :-1]).logits
                loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
                grad_norm = optimizer_step(accelerator, model, opt, sched, loss, step, cfg.optim.grad_clip)
                row = parallel.mean_metrics({"loss": loss.item(), "lr": sched.get_last_lr()[0],
                                             "grad_norm": float(grad_norm),
                                             "tokens_per_s": tokens_per_step * (step + 1 - start) / (time.time() - t0)})
                if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:  # the whole held-out set on each rank
                    last_eval = eval_loss(accelerator.unwrap_model(model), eval_blocks, 64)
                    row.update(eval_loss=last_eval, eval_ppl=math.exp(last_eval))
                run_dir.log(step + 1, **row)
                bar.advance(loss=row["loss"], eval_loss=last_eval)
                if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
                    state.save(run_dir.sub(f"checkpoints/step-{step + 1}"), step + 1)
        elapsed = time.time() - t0
        final = gathered(model)  # the full weights on rank 0 (FSDP2: gathered from every rank)
        if accelerator.is_main_process:
            save_model(final, tokenizer, run_dir.sub("model"))
            run_dir.write_summary("Pretraining", {
                "result": {"parameters": n_params, "steps": cfg.steps, "final_train_loss": row["loss"],
                           "eval_loss": last_eval, "eval_perplexity": math.exp(last_eval),
                           "tokens_seen": tokens_per_step * cfg.steps,
                           "tokens_per_s": tokens_per_step * (cfg.steps - start) / elapsed,
                           "corpus_passes": train_stream.epoch, "eval_docs": len(eval_docs)},
                "checkpoint": "model/ (Hugging Face folder: AutoModelForCausalLM.from_pretrained)"})
    return Path(cfg.out)
