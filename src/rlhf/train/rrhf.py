"""RRHF, rank responses to align with human feedback (Yuan et al. 2023), online.

Each step samples K responses for each of a batch of prompts from the current policy and scores them with
the reward model. The policy's score of a response is its length-normalized log-likelihood
p_i = sum_t log pi(y_i,t) / |y_i|^length_penalty, and the loss is

    L = rank_coef * sum_{r_i < r_j} max(0, p_i - p_j)  -  mean_t log pi(y_best,t)

per prompt (a hinge ranking loss: a response the RM prefers must not be less likely than one it ranks
lower; plus supervised fine-tuning on the RM's best response), averaged over prompts, as the authors'
code computes it. Equal RM scores make no pair. No reference model enters the loss.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf import parallel
from rlhf.errors import RLHFError
from rlhf.rollout.packed import packed_logprobs
from rlhf.train import loop
from rlhf.train.common import OptimConfig, masked_mean, no_eos_penalty
from rlhf.train.heldout import GoldFn
from rlhf.train.loop import StepOutput
from rlhf.train.sampling import GroupBatch, GroupRunConfig, GroupTrainer


@dataclass
class RRHFConfig(GroupRunConfig):
    out: str = "runs/rrhf"  # run directory
    steps: int = 40  # batches sampled and trained on
    prompts_per_step: int = 8  # prompts per batch
    k: int = 4  # responses per prompt
    rank_coef: float = 1.0  # weight of the ranking loss beside the SFT loss on the best response
    length_penalty: float = 1.0  # p_i = sum log-prob / length ** length_penalty
    samples_every: int = 10  # every N steps, the RM's best response to the batch's first prompt goes to the samples
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, weight_decay=0.0, warmup_steps=0,
                                                                   schedule="constant", betas=(0.9, 0.95)))

    def validate(self) -> None:
        super().validate()
        if self.k < 2:
            raise RLHFError(f"k must be at least 2 (RRHF ranks responses to one prompt), got {self.k}")


def rrhf_loss(logp: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor, rank_coef: float = 1.0,
              length_penalty: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One prompt's K responses: logp, mask (K, T) per-token log-probs; rewards (K,). Returns
    (loss, ranking loss, SFT loss)."""
    lengths = mask.sum(1).clamp(min=1)
    p = (logp * mask).sum(1) / lengths ** length_penalty
    diff = p[:, None] - p[None, :]  # diff[i, j] = p_i - p_j
    worse = rewards[:, None] < rewards[None, :]  # worse[i, j]: the RM ranks i below j
    rank = (diff.clamp(min=0) * worse).sum()
    best = int(torch.argmax(rewards))
    sft = -masked_mean(logp[best], mask[best])
    return rank_coef * rank + sft, rank, sft


class RRHF(GroupTrainer):
    """One step samples k responses per prompt, scores them, and takes one step on the RRHF loss."""
    name, title = "rrhf", "RRHF"
    bar_fields = {"loss": "loss", "rm": "rm_score"}
    summary_samples = 4
    plots = {"loss": ["loss", "rank_loss", "sft_loss"], "reward": ["rm_score", "rm_best", "gold"],
             "held-out": ["eval_kl", "eval_gold"]}

    def __init__(self, cfg: RRHFConfig, prompts: list | None, eval_prompts: list | None, gold: GoldFn | None):
        super().__init__(cfg, prompts, eval_prompts, cfg.steps, gold)
        self.steps = cfg.steps
        parallel.per_rank(cfg.prompts_per_step, "prompts_per_step")  # global, split by prompt over the ranks

    def step(self, step: int) -> StepOutput:
        """On many processes: this rank's prompts (all k responses of each); the loss is a mean over prompts, so
        the averaged gradients and the metrics are the global batch's."""
        cfg, k = self.cfg, self.cfg.k
        idx = self.take(cfg.prompts_per_step, "prompts_per_step")
        groups = self.sample(idx, k)
        scores = no_eos_penalty(groups.scores, groups.roll.finished, cfg.no_eos_score)
        rows = groups.rows([self.encoded[i] for i in idx])
        with self.accelerator.autocast():
            logp, mask = packed_logprobs(self.policy, rows, self.tokenizer.pad_token_id)
        parts = [rrhf_loss(logp[n * k:(n + 1) * k], mask[n * k:(n + 1) * k], scores[n * k:(n + 1) * k],
                           cfg.rank_coef, cfg.length_penalty) for n in range(len(idx))]
        loss = torch.stack([part[0] for part in parts]).mean()
        self.update(loss, step)
        row = parallel.mean_metrics({
            "loss": loss.item(), "rank_loss": sum(part[1].item() for part in parts) / len(parts),
            "sft_loss": sum(part[2].item() for part in parts) / len(parts), "rm_score": groups.scores.mean().item(),
            "rm_best": scores.view(-1, k).max(1).values.mean().item(),
            "response_length": mask.sum(1).mean().item(), "eos_rate": groups.roll.finished.float().mean().item()})
        return StepOutput(row, GroupBatch([self.prompts[i] for i in idx for _ in range(k)], groups),
                          cfg.prompts_per_step * k)

    def sample_rows(self, step: int, out: StepOutput, golds: list[float] | None) -> list[dict]:
        """The RM's best response to the batch's first prompt."""
        groups, p = out.batch.groups, out.batch.prompts[0]
        scores = no_eos_penalty(groups.scores, groups.roll.finished, self.cfg.no_eos_score)
        best = int(scores[:self.cfg.k].argmax())
        return [{"step": step, "prompt": p if isinstance(p, str) else p[-1]["content"], "best": groups.texts[best],
                 "rm": round(scores[best].item(), 3)}]

    def result(self, progress: loop.Progress) -> dict:
        row, cfg = progress.row, self.cfg
        return {"steps": progress.done, "k": cfg.k, "episodes": progress.done * cfg.prompts_per_step * cfg.k,
                "seconds": progress.train_seconds, **{k: row[k] for k in ("loss", "rank_loss", "sft_loss", "rm_score")}}


def run(cfg: RRHFConfig, show_progress: bool = True, gold: GoldFn | None = None, prompts: list | None = None,
        eval_prompts: list | None = None) -> Path:
    """`gold`: optional (prompt, response) -> gold reward, logged for training samples and held-out prompts."""
    cfg.validate()
    return loop.run(RRHF(cfg, prompts, eval_prompts, gold), loop.Hooks(gold=gold), show_progress)
