"""RAFT, reward-ranked fine-tuning (Dong et al. 2023): iterate sample -> rank -> fine-tune.

Each iteration samples K responses for each of a batch of prompts from the current policy, keeps the top
`keep_fraction` of each prompt's K by reward-model score (best-of-K when keep_fraction = 1/K), and runs
supervised fine-tuning on the kept (prompt, response) pairs: the loss is the mean negative log-likelihood
of the kept responses' tokens (prompt tokens are context only). No reference model enters the loss; the KL
to the starting policy is measured on held-out prompts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf import parallel
from rlhf.errors import RLHFError
from rlhf.rollout.packed import PackedRow, pack, packed_logprobs
from rlhf.train import loop
from rlhf.train.common import OptimConfig, masked_mean, no_eos_penalty
from rlhf.train.heldout import GoldFn
from rlhf.train.loop import StepOutput
from rlhf.train.sampling import GroupRunConfig, GroupTrainer


@dataclass
class RAFTConfig(GroupRunConfig):
    out: str = "runs/raft"  # run directory
    iterations: int = 4  # sample -> rank -> fine-tune rounds (the loop's steps: save_every counts them)
    prompts_per_iteration: int = 128  # prompts sampled per iteration
    k: int = 8  # samples per prompt
    keep_fraction: float = 0.125  # top fraction of each prompt's k kept for fine-tuning (k * keep_fraction whole)
    sample_batch_prompts: int = 32  # prompts per sampling call (times k sequences)
    sft_epochs: float = 1.0  # passes over each iteration's kept set
    batch_size: int = 16  # prompts (with their kept responses) per fine-tuning step
    samples_every: int = 1  # every N iterations, the best kept response of the first two prompts of each sampling call
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, weight_decay=0.0, warmup_steps=0,
                                                                   schedule="constant", betas=(0.9, 0.95)))

    def validate(self) -> None:
        super().validate()
        keep_count(self.k, self.keep_fraction)

    @property
    def steps_per_iteration(self) -> int:
        """Fine-tuning steps per iteration."""
        return max(1, math.ceil(self.sft_epochs * self.prompts_per_iteration / self.batch_size))


def keep_count(k: int, fraction: float) -> int:
    keep = k * fraction
    if not 0 < fraction <= 1 or abs(keep - round(keep)) > 1e-9 or round(keep) < 1:
        raise RLHFError(f"keep_fraction: k * keep_fraction must be a whole number of responses between 1 and k "
                        f"(k={k}, keep_fraction={fraction} gives {keep:g})")
    return int(round(keep))


def select_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """(n, k) scores -> (n, keep) indices of each row's highest scores, best first (ties: earlier sample first)."""
    return torch.argsort(scores, dim=1, descending=True, stable=True)[:, :keep]


def sft_loss(policy, rows: list[PackedRow], pad_id: int) -> torch.Tensor:
    """Mean negative log-likelihood over the response tokens of `rows` (at temperature 1)."""
    logp, mask = packed_logprobs(policy, rows, pad_id)
    return -masked_mean(logp, mask)


@dataclass
class Kept:
    """One iteration's kept set: a packed row list per prompt, and what the metrics and samples need."""
    rows: list = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # kept responses' RM scores
    all_scores: list[torch.Tensor] = field(default_factory=list)  # every sampled response's RM score
    golds: list[float] = field(default_factory=list)  # kept responses' gold scores (with a gold scorer)
    samples: list[dict] = field(default_factory=list)
    where: list[int] = field(default_factory=list)  # each row's prompt's position in the iteration's global batch


class RAFT(GroupTrainer):
    """One step is one iteration: sample k per prompt, keep the top fraction, fine-tune on them."""
    name, title = "raft", "RAFT"
    bar_fields = {"loss": "sft_loss", "rm_kept": "rm_kept"}
    plots = {"reward": ["rm_all", "rm_kept", "gold_kept"], "sft loss": ["sft_loss"],
             "held-out": ["eval_kl", "eval_gold"]}

    def __init__(self, cfg: RAFTConfig, prompts: list | None, eval_prompts: list | None, gold: GoldFn | None):
        super().__init__(cfg, prompts, eval_prompts, cfg.iterations * cfg.steps_per_iteration, gold)
        self.steps, self.keep = cfg.iterations, keep_count(cfg.k, cfg.keep_fraction)
        self.table: list[dict] = []  # one row per iteration, for the summary
        for key in ("prompts_per_iteration", "sample_batch_prompts", "batch_size"):  # global sizes, split by prompt
            parallel.per_rank(getattr(cfg, key), key)

    def step(self, step: int) -> StepOutput:
        """On many processes each rank samples its slice of every sampling call's prompts and fine-tunes on
        its kept share; the loss is the global batch's token mean and the metrics are the global iteration's."""
        kept = self.sample_and_keep(self.order.take(self.cfg.prompts_per_iteration), step + 1)
        all_scores, ranks = torch.cat(kept.all_scores), parallel.world_size()
        stat = {"rm_all": all_scores.mean().item(), "rm_kept": sum(kept.scores) / len(kept.scores)}
        if kept.golds:
            stat["gold_kept"] = sum(kept.golds) / len(kept.golds)
        stat = {**parallel.mean_metrics(stat), "kept": len(kept.scores) * ranks, "sampled": len(all_scores) * ranks}
        stat["sft_loss"] = self.fine_tune(kept, step * self.cfg.steps_per_iteration)
        self.table.append({"iteration": step + 1, **stat})
        return StepOutput(stat, kept.samples)

    def sample_and_keep(self, idx: list[int], iteration: int) -> Kept:
        """k responses per prompt, sampled sample_batch_prompts prompts at a time (on many processes, each rank its
        slice of each call's prompts); each prompt's best kept."""
        cfg, kept = self.cfg, Kept()
        for c in range(0, len(idx), cfg.sample_batch_prompts):
            chunk = parallel.shard(idx[c:c + cfg.sample_batch_prompts], "sample_batch_prompts")
            kept.where += range(c + parallel.rank() * len(chunk), c + (parallel.rank() + 1) * len(chunk))
            groups = self.sample(chunk, cfg.k)
            scores = no_eos_penalty(groups.scores, groups.roll.finished, cfg.no_eos_score)
            top = select_top(scores.view(-1, cfg.k).cpu(), self.keep)
            kept.all_scores.append(scores.cpu())
            ids, mask = groups.roll.response_ids, groups.roll.response_mask
            for n, i in enumerate(chunk):
                flat = [n * cfg.k + int(j) for j in top[n]]
                kept.rows.append(pack(self.encoded[i], [ids[f][mask[f].bool()].tolist() for f in flat],
                                      len(self.encoded[i]) + ids.shape[1] + 1))
                kept.scores += [scores[f].item() for f in flat]
                if self.gold is not None:
                    kept.golds += [self.gold(self.prompts[i], groups.texts[f]) for f in flat]
                if n < 2:
                    p = self.prompts[i]
                    kept.samples.append({"iteration": iteration,
                                         "prompt": p if isinstance(p, str) else p[-1]["content"],
                                         "kept": groups.texts[flat[0]], "rm": round(scores[flat[0]].item(), 3)})
        return kept

    def fine_tune(self, kept: Kept, first_step: int) -> float:
        """steps_per_iteration supervised steps on the kept set (batches of batch_size prompts in random
        order, drawn from the prompt order's generator); returns the mean loss. On many processes every rank
        draws the global order and takes its own prompts in that order, batch_size / ranks at a time; the loss
        is the token mean over the global batch."""
        cfg, losses, order, ranks = self.cfg, [], [], parallel.world_size()
        batch_size = parallel.per_rank(cfg.batch_size, "batch_size")
        mine = {g: i for i, g in enumerate(kept.where)}  # global position -> this rank's kept row
        for j in range(cfg.steps_per_iteration):
            if len(order) < batch_size:
                perm = torch.randperm(cfg.prompts_per_iteration if ranks > 1 else len(kept.rows),
                                      generator=self.order.generator).tolist()
                order += perm if ranks == 1 else [mine[g] for g in perm if g in mine]
            batch, order = order[: batch_size], order[batch_size:]
            rows, start = [], 0
            for i in batch:
                rows += [(p, rs, [start + w for w in where]) for p, rs, where in kept.rows[i]]
                start += self.keep
            with self.accelerator.autocast():
                if ranks == 1:
                    loss = sft_loss(self.policy, rows, self.tokenizer.pad_token_id)
                else:  # this rank's share of the global token mean, times ranks (the gradients are averaged)
                    logp, mask = packed_logprobs(self.policy, rows, self.tokenizer.pad_token_id)
                    loss = -(logp * mask).sum() / parallel.all_sum(mask.sum()).to(logp.dtype) * ranks
            self.update(loss, first_step + j, updates_applied=j)
            losses.append(loss.item() if ranks == 1 else float(parallel.all_sum(loss.detach())) / ranks)
        return sum(losses) / len(losses)

    def sample_rows(self, step: int, out: StepOutput, golds: list[float] | None) -> list[dict]:
        return out.batch

    def scalars(self) -> dict:
        return {"iterations": self.table}

    def restore(self, scalars: dict) -> None:
        self.table = list(scalars.get("iterations", []))

    def result(self, progress: loop.Progress) -> dict:
        cfg = self.cfg
        return {"iterations": progress.done, "k": cfg.k, "kept_per_prompt": self.keep,
                "sft_steps": progress.done * cfg.steps_per_iteration,
                "episodes": progress.done * cfg.prompts_per_iteration * cfg.k, "seconds": progress.train_seconds}

    def sections(self) -> dict:
        return {"iterations": self.table}


def run(cfg: RAFTConfig, show_progress: bool = True, gold: GoldFn | None = None, prompts: list | None = None,
        eval_prompts: list | None = None) -> Path:
    """`gold`: optional (prompt, response) -> gold reward of the kept responses and held-out samples."""
    cfg.validate()
    return loop.run(RAFT(cfg, prompts, eval_prompts, gold), loop.Hooks(), show_progress)
