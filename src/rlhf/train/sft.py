"""Stage 2: supervised fine-tuning on demonstrations; the loss is on response tokens only."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rlhf.data.chat import IGNORE, encode_dialogue
from rlhf.data.filters import is_dialogue
from rlhf.data.jsonl import read_jsonl
from rlhf.data.packing import PtxStream, load_texts
from rlhf.data.sampler import IndexStream
from rlhf import parallel
from rlhf.errors import RLHFError
from rlhf.models import lora
from rlhf.models.options import ModelOptions
from rlhf.models.lm import load_causal_lm, load_tokenizer
from rlhf.parallel import ParallelConfig
from rlhf.parallel.fsdp import gathered, prepare
from rlhf.progress import progress_bar
from rlhf.rundir import RunDir
from rlhf.train.checkpoint import TrainerState, resume
from rlhf.train.common import (OptimConfig, global_token_mean, make_accelerator, make_optimizer,
                               optimizer_step)


@dataclass
class SFTConfig:
    out: str = "runs/sft"  # run directory
    seed: int = 0  # seeds the example order, the ptx stream and LoRA's initial adapters
    model: ModelOptions = field(default_factory=ModelOptions)  # dtype, gradient checkpointing, LoRA
    init: str = "runs/pretrain/model"  # the starting checkpoint (a Hugging Face causal LM folder)
    data: str | None = None  # JSONL of {"messages"} or {"prompt", "completion"}; `rlhf sft`: the world's demonstrations
    dialogue_filter: bool = False  # Gopher heuristic on {"text"} documents turned into dialogues
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=20, weight_decay=0.0))
    epochs: float = 6.0  # the demonstrations are small: fewer passes leave samples at T=1 garbled
    batch_size: int = 32  # dialogues per step
    max_len: int = 128  # tokens per dialogue (longer ones are cut)
    # The pretraining LM loss mixed into SFT (as PPO-ptx mixes it into RL): fine-tuning on a few hundred
    # demonstrations for several epochs otherwise overwrites what pretraining taught about other facts.
    ptx_coef: float = 0.0
    ptx_data: str | None = None  # JSONL of {"text"}; `rlhf sft`: the world's corpus
    ptx_batch_size: int = 16  # pretraining blocks per step
    ptx_seq_len: int = 64  # tokens per pretraining block
    save_every: int = 0  # a checkpoint every N steps to resume from (0: only the final model)
    resume: str | None = None  # a checkpoints/step-N folder of an earlier run with the same config
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # many processes: ddp | fsdp2

    def validate(self) -> None:
        self.optim.validate()
        self.parallel.validate()


def _to_messages(obj: dict, where: str) -> list[dict]:
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise RLHFError(f"{where}: 'messages' must be a non-empty list")
        if not any(m.get("role") == "assistant" for m in msgs if isinstance(m, dict)):
            raise RLHFError(f"{where}: dialogue has no assistant turn to train on")
        return msgs
    if "prompt" in obj and "completion" in obj:
        return [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["completion"]}]
    if "text" in obj:
        return _text_to_messages(obj["text"], where)
    raise RLHFError(f"{where}: expected 'messages', 'prompt'+'completion' or 'text'")


def _text_to_messages(text: str, where: str) -> list[dict]:
    """A 'Human: ... / Assistant: ...' or 'A: ... / B: ...' transcript: the second speaker is the assistant."""
    turns = [p.split(":", 1) for p in text.split("\n") if ":" in p]
    speakers = list(dict.fromkeys(s.strip() for s, _ in turns))
    if len(speakers) < 2:
        raise RLHFError(f"{where}: text is not a two-speaker dialogue")
    return [{"role": "user" if s.strip() == speakers[0] else "assistant", "content": c.strip()} for s, c in turns]


def load_dialogues(cfg: SFTConfig) -> tuple[list[list[dict]], int]:
    """(dialogues from cfg.data, number dropped by the dialogue filter)."""
    out, dropped = [], 0
    for lineno, obj in read_jsonl(cfg.data):
        if cfg.dialogue_filter and "text" in obj and not is_dialogue(obj["text"]):
            dropped += 1
            continue
        out.append(_to_messages(obj, f"{cfg.data}:{lineno}"))
    if not out:
        raise RLHFError(f"{cfg.data}: no dialogues to train on")
    return out, dropped


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), IGNORE)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def response_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy where labels != IGNORE (the assistant's tokens)."""
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                             ignore_index=IGNORE)


def global_response_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    """`response_loss` over the global batch when this process holds a shard of it: (the loss to backward, the
    mean over every rank's response tokens). One process: response_loss itself."""
    if parallel.world_size() == 1:
        loss = response_loss(logits, labels)
        return loss, loss.item()
    total = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                              ignore_index=IGNORE, reduction="sum")
    return global_token_mean(total, (labels[:, 1:] != IGNORE).sum())


def run(cfg: SFTConfig, show_progress: bool = True, *, dialogues: list[list[dict]] | None = None,
        ptx_docs: list[str] | None = None) -> Path:
    """Fine-tune on `dialogues` (message lists), or on the `data` file when it is set; with ptx_coef > 0, the LM
    loss on `ptx_docs` (or the `ptx_data` file) is added with that weight."""
    cfg.validate()
    dropped = 0
    if cfg.data is not None:
        dialogues, dropped = load_dialogues(cfg)  # bad data fails before the model is loaded
    if not dialogues:
        raise RLHFError("sft: no dialogues to train on; set data to a JSONL file of {\"messages\"}")
    ptx_docs = load_texts(cfg.ptx_data) if cfg.ptx_data else ptx_docs
    if cfg.ptx_coef > 0 and not ptx_docs:
        raise RLHFError("sft: ptx_coef > 0 needs pretraining text: set ptx_data to a JSONL file of {\"text\": ...}")
    tokenizer = load_tokenizer(cfg.init)
    model = lora.trainable(load_causal_lm(cfg.init), cfg.model, cfg.seed)
    examples = [encode_dialogue(tokenizer, d, cfg.max_len) for d in dialogues]
    examples = [e for e in examples if any(y != IGNORE for y in e[1])]
    steps = max(1, int(cfg.epochs * len(examples) / cfg.batch_size))
    accelerator = make_accelerator(cfg.seed, mixed_precision=cfg.model.mixed_precision)
    parallel.per_rank(cfg.batch_size, "batch_size")
    if ptx_docs and cfg.ptx_coef > 0:
        parallel.per_rank(cfg.ptx_batch_size, "ptx_batch_size")
    model, opt, sched = prepare(accelerator, model, lambda m: make_optimizer(m, cfg.optim, steps),
                                cfg.parallel.strategy)
    model.train()
    order = IndexStream(len(examples), torch.Generator().manual_seed(cfg.seed))
    ptx = PtxStream(tokenizer, ptx_docs, cfg.ptx_seq_len, cfg.seed) if cfg.ptx_coef > 0 else None
    state = TrainerState({"model": model}, {"opt": opt, "sched": sched, "order": order},
                         {"ptx": ptx.generator} if ptx else {}, tokenizer=tokenizer)
    start, _ = resume(state, cfg.resume, "SFT", steps)
    with RunDir(cfg.out, cfg) as run_dir:
        t0 = time.time()
        with progress_bar("sft", steps - start, show_progress and accelerator.is_main_process) as bar:
            for step in range(start, steps):
                idx = parallel.shard(order.take(cfg.batch_size))  # this process's slice of the global batch
                batch = {k: v.to(accelerator.device)
                         for k, v in collate([examples[i] for i in idx], tokenizer.pad_token_id).items()}
                extra = {}
                with accelerator.autocast():  # bf16 matmuls under model.mixed_precision=bf16, else a no-op
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    total, loss = global_response_loss(logits, batch["labels"])
                    if ptx is not None:
                        blk = parallel.shard(ptx.batch(cfg.ptx_batch_size)).to(accelerator.device)
                        ptx_loss = F.cross_entropy(model(input_ids=blk[:, :-1]).logits.float().flatten(0, 1),
                                                   blk[:, 1:].flatten())  # equal shards: DDP's mean is global
                        extra["ptx_loss"] = parallel.mean_metrics({"ptx_loss": ptx_loss.item()})["ptx_loss"]
                        total = total + cfg.ptx_coef * ptx_loss
                optimizer_step(accelerator, model, opt, sched, total, step, cfg.optim.grad_clip)
                run_dir.log(step + 1, loss=loss, lr=sched.get_last_lr()[0], **extra)
                bar.advance(loss=loss)
                if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < steps:
                    state.save(run_dir.sub(f"checkpoints/step-{step + 1}"), step + 1)
        final = gathered(model)  # the full weights on rank 0 (FSDP2: gathered from every rank)
        if accelerator.is_main_process:
            lora.save_final(final, tokenizer, run_dir.sub("model"))
            run_dir.write_summary("Supervised fine-tuning", {
                "result": {"dialogues": len(examples), "dropped_by_dialogue_filter": dropped, "steps": steps,
                           "final_loss": loss, "seconds": time.time() - t0},
                "checkpoint": "model/"})
    return Path(cfg.out)
