"""GRPO and RLOO: policy gradient with a group baseline instead of a value model.

Each step samples a group of G responses for each of a batch of prompts, scores them with the reward
model and turns each score into an advantage against the rest of its group:

  grpo (Shao et al. 2024):     A_i = (r_i - mean(r)) / (std(r) + eps)   (std scaling optional)
  rloo (Ahmadian et al. 2024): A_i = r_i - mean(r_j, j != i)            (leave-one-out, unbiased)

The sequence's advantage is given to every token, and the update is PPO's clipped surrogate on
ratio = pi / pi_old (with one epoch per batch the ratio is 1 and this is plain REINFORCE with the
baseline). The KL to the frozen reference is either a loss term (kl_mode=loss: beta * the k3 estimator
exp(ref - logp) - (ref - logp) - 1 per token, as GRPO) or a penalty on the reward before the baseline
(kl_mode=reward: r - beta * sum_t (logp - ref), as RLOO). Both live in one file because they differ
only in the advantage estimator and their defaults; `rlhf rloo` is this loop with RLOOConfig.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf import parallel
from rlhf.errors import RLHFError
from rlhf.rollout.packed import packed_logprobs
from rlhf.train import loop
from rlhf.train.common import OptimConfig, check_finite, masked_mean, no_eos_penalty
from rlhf.train.heldout import GoldFn
from rlhf.train.loop import StepOutput
from rlhf.train.sampling import GroupBatch, GroupRunConfig, GroupTrainer


@dataclass
class GRPOConfig(GroupRunConfig):
    out: str = "runs/grpo"  # run directory
    estimator: str = "grpo"  # grpo | rloo
    steps: int = 40  # batches sampled and trained on
    prompts_per_step: int = 16  # prompts per batch
    group_size: int = 4  # responses per prompt
    micro_batch_prompts: int = 16  # prompts (with their groups) per forward/backward
    epochs: int = 1  # updates per batch (GRPO's mu); 1: ratio = 1, no old-policy pass needed
    kl_mode: str = "loss"  # loss: beta * k3 per token in the loss | reward: beta * sum log-ratio off the reward
    beta: float = 0.04  # KL coefficient (in the loss or on the reward, by kl_mode)
    scale_rewards: bool = True  # grpo: divide by the group's std
    cliprange: float = 0.2  # the ratio is clipped to [1 - cliprange, 1 + cliprange]
    # sequence: mean over each response's tokens, then over responses | token: over all tokens
    loss_agg: str = "sequence"
    reward_clip: float = 10.0  # RM scores are clipped to [-reward_clip, reward_clip]
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, weight_decay=0.0, warmup_steps=0,
                                                                   schedule="linear", betas=(0.9, 0.95)))
    eval_every: int = 0  # held-out KL / gold every N steps (0: before and after training only)
    samples_every: int = 10  # the first two groups of every N-th batch go to the sample table

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise RLHFError(f"group_size must be at least 2 (a group baseline compares responses to one prompt), "
                            f"got {self.group_size}")
        for key, value, allowed in (("estimator", self.estimator, ("grpo", "rloo")),
                                    ("kl_mode", self.kl_mode, ("loss", "reward")),
                                    ("loss_agg", self.loss_agg, ("sequence", "token"))):
            if value not in allowed:
                raise RLHFError(f"{key}: expected {' or '.join(allowed)}, got '{value}'")
        if self.prompts_per_step % self.micro_batch_prompts:
            raise RLHFError(f"prompts_per_step ({self.prompts_per_step}) must be a multiple of micro_batch_prompts "
                            f"({self.micro_batch_prompts})")
        if self.epochs < 1:
            raise RLHFError(f"epochs must be at least 1, got {self.epochs}")


@dataclass
class RLOOConfig(GRPOConfig):
    out: str = "runs/rloo"
    estimator: str = "rloo"
    kl_mode: str = "reward"


# ---------------------------------------------------------------- the pieces the tests check


def group_advantages(rewards: torch.Tensor, estimator: str, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """rewards: (n_prompts, group_size). Identical rewards in a group give zero advantages (never NaN)."""
    group_size = rewards.shape[1]
    if group_size < 2:
        raise RLHFError(f"group_size must be at least 2 (a group baseline compares responses to one prompt), "
                        f"got {group_size}")
    mean = rewards.mean(1, keepdim=True)
    if estimator == "rloo":
        return (rewards - mean) * group_size / (group_size - 1)  # r_i - mean of the other group_size - 1
    adv = rewards - mean
    return adv / (rewards.std(1, keepdim=True) + eps) if scale else adv


def policy_loss(logp, old_logp, ref_logp, adv, mask, cfg: GRPOConfig) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate with the sequence advantage on every token, plus the k3 KL term (kl_mode=loss)."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    per_token = -torch.min(ratio * a, ratio.clamp(1 - cfg.cliprange, 1 + cfg.cliprange) * a)
    d = ref_logp - logp
    k3 = torch.exp(d) - d - 1
    if cfg.kl_mode == "loss":
        per_token = per_token + cfg.beta * k3
    loss = masked_mean(per_token, mask) if cfg.loss_agg == "token" else masked_mean(per_token, mask, dim=1).mean()
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        stats = {"clipfrac": (((ratio - 1).abs() > cfg.cliprange).float() * mask).sum().item() / n.item(),
                 "kl_k3": ((k3 * mask).sum(1)).mean().item()}
    return loss, stats


# ---------------------------------------------------------------- the trainer


@dataclass
class Reference:
    """A batch's packed rows per micro-batch with the reference's log-probs, and (when an epoch needs them)
    the sampling policy's log-probs and sequence KL."""
    rows: list = field(default_factory=list)
    ref_logp: list = field(default_factory=list)
    old_logp: list = field(default_factory=list)
    seq_kl: list = field(default_factory=list)


class GRPO(GroupTrainer):
    """GRPO or RLOO (cfg.estimator): one step samples a group per prompt, scores it, and updates the policy."""
    unit = "episodes"
    bar_fields = {"rm": "rm_score", "kl": "kl"}
    summary_samples = 6
    plots = {"reward": ["rm_score", "reward", "gold"], "kl": ["kl", "kl_k3"], "loss": ["loss"],
             "clipfrac": ["clipfrac"], "group": ["group_std", "zero_std_groups"],
             "response_length": ["response_length"], "held-out": ["eval_kl", "eval_gold"],
             "throughput": ["episodes_per_s"]}

    def __init__(self, cfg: GRPOConfig, prompts: list | None, eval_prompts: list | None, gold: GoldFn | None):
        super().__init__(cfg, prompts, eval_prompts, cfg.steps, gold)
        self.name, self.title, self.steps = cfg.estimator, cfg.estimator.upper(), cfg.steps
        parallel.per_rank(cfg.prompts_per_step, "prompts_per_step")  # global sizes, split by prompt over the ranks
        self.micro_prompts = parallel.per_rank(cfg.micro_batch_prompts, "micro_batch_prompts")

    def step(self, step: int) -> StepOutput:
        """On many processes: this rank's prompts (whole groups), group advantages on them, and the gradients and
        metrics of the global batch (token means over its token count with loss_agg=token)."""
        cfg, group_size = self.cfg, self.cfg.group_size
        idx = self.take(cfg.prompts_per_step, "prompts_per_step")
        groups = self.sample(idx, group_size)  # group_size responses per prompt, scored
        scores = no_eos_penalty(groups.scores, groups.roll.finished, cfg.no_eos_score).clamp(-cfg.reward_clip,
                                                                                               cfg.reward_clip)
        ref = self.reference(idx, groups)
        rewards = scores - cfg.beta * torch.cat(ref.seq_kl) if cfg.kl_mode == "reward" else scores
        adv = group_advantages(rewards.view(-1, group_size), cfg.estimator, cfg.scale_rewards).flatten()
        n_tokens = groups.roll.response_mask.sum().float()
        stats, grad_norm = self.update_policy(step, ref, adv, n_tokens if parallel.world_size() == 1
                                              else parallel.all_sum(n_tokens).float())
        self.sched.step()
        by_group = scores.view(-1, group_size)
        row = parallel.mean_metrics({  # every rank holds the same number of groups: the global batch's means
            "rm_score": groups.scores.mean().item(), "reward": rewards.mean().item(),
            "group_std": by_group.std(1).mean().item(), "zero_std_groups": (by_group.std(1) == 0).float().mean().item(),
            "response_length": groups.roll.response_mask.float().sum(1).mean().item(),
            "eos_rate": groups.roll.finished.float().mean().item(), "grad_norm": float(grad_norm),
            "lr": self.sched.get_last_lr()[0], **{k: sum(v) / len(v) for k, v in stats.items()}})
        batch = GroupBatch([self.prompts[i] for i in idx for _ in range(group_size)], groups, adv)
        return StepOutput(row, batch, cfg.prompts_per_step * group_size)

    @torch.no_grad()
    def reference(self, idx: list[int], groups) -> Reference:
        """Log-probs: one packed forward per micro-batch (each prompt once beside its group)."""
        cfg, pad, out = self.cfg, self.tokenizer.pad_token_id, Reference()
        with self.accelerator.autocast():
            for start in range(0, len(idx), self.micro_prompts):
                rows = groups.rows([self.encoded[i] for i in idx], start, start + self.micro_prompts)
                out.rows.append(rows)
                ref_logp, mask = packed_logprobs(self.ref, rows, pad, cfg.sampling.temperature)
                out.ref_logp.append(ref_logp)
                if cfg.epochs > 1 or cfg.kl_mode == "reward":
                    old_logp, _ = packed_logprobs(self.policy, rows, pad, cfg.sampling.temperature)
                    out.old_logp.append(old_logp)
                    out.seq_kl.append(((old_logp - ref_logp) * mask).sum(1))
        return out

    def update_policy(self, step: int, ref: Reference, adv: torch.Tensor,
                      n_tokens: torch.Tensor) -> tuple[dict, float]:
        """cfg.epochs optimizer steps on the batch, micro-batches adding up to the whole batch's mean (over
        responses, or over the global batch's `n_tokens` tokens; the ranks' gradients are averaged, so a rank's
        token sum counts ranks times)."""
        cfg, responses, ranks = self.cfg, self.micro_prompts * self.cfg.group_size, parallel.world_size()
        stats: dict[str, list[float]] = {"loss": [], "clipfrac": [], "kl_k3": [], "kl": []}
        pad, temperature = self.tokenizer.pad_token_id, cfg.sampling.temperature
        for epoch in range(cfg.epochs):
            for mb, rows in enumerate(ref.rows):
                with self.accelerator.autocast():
                    logp, mask = packed_logprobs(self.policy, rows, pad, temperature)
                old = ref.old_logp[mb] if ref.old_logp else logp.detach()
                loss, s = policy_loss(logp, old, ref.ref_logp[mb], adv[mb * responses:(mb + 1) * responses], mask, cfg)
                check_finite(loop.finite_everywhere(loss), step, updates_applied=epoch)
                share = mask.sum() / n_tokens if cfg.loss_agg == "token" else mask.shape[0] / len(adv)
                if ranks > 1 and cfg.loss_agg == "token":
                    share = share * ranks
                self.accelerator.backward(loss * share)
                stats["loss"].append(loss.item())
                stats["clipfrac"].append(s["clipfrac"])
                stats["kl_k3"].append(s["kl_k3"])
                stats["kl"].append(((logp.detach() - ref.ref_logp[mb]) * mask).sum(1).mean().item())
            parallel.average_gradients(self.policy)
            grad_norm = self.accelerator.clip_grad_norm_(self.policy.parameters(), cfg.optim.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return stats, grad_norm

    def sample_rows(self, step: int, out: StepOutput, golds: list[float] | None) -> list[dict]:
        """The first two groups of the batch, with each response's RM score and advantage."""
        batch = out.batch
        texts = batch.texts[: 2 * self.cfg.group_size]
        return [{"step": step, "prompt": p if isinstance(p, str) else p[-1]["content"], "response": text,
                 "rm": round(batch.groups.scores[j].item(), 3), "advantage": round(batch.advantages[j].item(), 3),
                 **({"gold": round(golds[j], 3)} if golds else {})}
                for j, (p, text) in enumerate(zip(batch.prompts, texts))]

    def result(self, progress: loop.Progress) -> dict:
        row = progress.row
        return {"estimator": self.cfg.estimator, "kl_mode": self.cfg.kl_mode, "steps": progress.done,
                "episodes": progress.items, "seconds": progress.train_seconds,
                "cpu_seconds": progress.train_cpu_seconds,
                "episodes_per_s": progress.items / max(1e-9, progress.train_seconds),
                **{k: row[k] for k in ("rm_score", "kl", "response_length", "eos_rate") if k in row}}


def run(cfg: GRPOConfig, show_progress: bool = True, gold: GoldFn | None = None, prompts: list | None = None,
        eval_prompts: list | None = None) -> Path:
    """`gold`: optional (prompt, response) -> gold reward, logged for training samples and held-out prompts.
    `prompts` / `eval_prompts`: prompt lists that replace the configured JSONL files."""
    cfg.validate()
    return loop.run(GRPO(cfg, prompts, eval_prompts, gold), loop.Hooks(gold=gold), show_progress)
