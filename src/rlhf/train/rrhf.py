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

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf.data.jsonl import write_jsonl
from rlhf.models import lora
from rlhf.errors import RLHFError
from rlhf.progress import progress_bar
from rlhf.rollout.packed import packed_logprobs
from rlhf.rundir import RunDir
from rlhf.train.common import OptimConfig, optimizer_step
from rlhf.train.heldout import GoldFn
from rlhf.train.sampling import GroupRunConfig, sample_groups, setup_group_trainer


@dataclass
class RRHFConfig(GroupRunConfig):
    out: str = "runs/rrhf"
    steps: int = 40
    prompts_per_step: int = 8
    k: int = 4  # responses per prompt
    rank_coef: float = 1.0
    length_penalty: float = 1.0  # p_i = sum log-prob / length ** length_penalty
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, weight_decay=0.0, warmup_steps=0,
                                                                   schedule="constant", betas=(0.9, 0.95)))


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
    sft = -(logp[best] * mask[best]).sum() / lengths[best]
    return rank_coef * rank + sft, rank, sft


def run(cfg: RRHFConfig, show_progress: bool = True, gold: GoldFn | None = None, prompts: list | None = None,
        eval_prompts: list | None = None) -> Path:
    if cfg.k < 2:
        raise RLHFError(f"k must be at least 2 (RRHF ranks responses to one prompt), got {cfg.k}")
    setup = setup_group_trainer(cfg, prompts, eval_prompts, cfg.steps)
    prompts, tokenizer, accelerator = setup.prompts, setup.tokenizer, setup.accelerator
    policy, reward_model = setup.policy, setup.reward_model
    opt, sched, encoded, gen_sample, gen_order = setup.opt, setup.sched, setup.encoded, setup.gen_sample, setup.gen_order
    order: list[int] = []
    K = cfg.k
    with RunDir(cfg.out, cfg) as run_dir:
        def held_out(step: int) -> dict:
            return setup.held_out(cfg, run_dir, step, gold)

        before = held_out(0)
        t0, samples = time.time(), []
        with progress_bar("rrhf", cfg.steps, show_progress and accelerator.is_main_process) as bar:
            for step in range(cfg.steps):
                while len(order) < cfg.prompts_per_step:
                    order += torch.randperm(len(prompts), generator=gen_order).tolist()
                idx, order = order[: cfg.prompts_per_step], order[cfg.prompts_per_step:]
                with accelerator.autocast():  # bf16 matmuls under model.mixed_precision=bf16, else a no-op
                    g = sample_groups(policy, reward_model, tokenizer, [encoded[i] for i in idx], K, cfg.sampling, gen_sample)
                scores = g.scores
                if cfg.no_eos_score is not None:
                    scores = torch.where(g.roll.finished, scores, torch.full_like(scores, cfg.no_eos_score))
                with accelerator.autocast():
                    logp, mask = packed_logprobs(policy, g.rows([encoded[i] for i in idx]), tokenizer.pad_token_id)
                parts = [rrhf_loss(logp[n * K:(n + 1) * K], mask[n * K:(n + 1) * K], scores[n * K:(n + 1) * K],
                                   cfg.rank_coef, cfg.length_penalty) for n in range(len(idx))]
                loss = torch.stack([p[0] for p in parts]).mean()
                optimizer_step(accelerator, policy, opt, sched, loss, step, cfg.optim.grad_clip)
                best = scores.view(-1, K).argmax(1)
                row = {"loss": loss.item(), "rank_loss": sum(p[1].item() for p in parts) / len(parts),
                       "sft_loss": sum(p[2].item() for p in parts) / len(parts), "rm_score": g.scores.mean().item(),
                       "rm_best": scores.view(-1, K).max(1).values.mean().item(),
                       "response_length": mask.sum(1).mean().item(), "eos_rate": g.roll.finished.float().mean().item()}
                if gold is not None:
                    golds = [gold(prompts[i], g.texts[n * K + g_]) for n, i in enumerate(idx) for g_ in range(K)]
                    row["gold"] = sum(golds) / len(golds)
                run_dir.log(step + 1, **row)
                bar.advance(loss=row["loss"], rm=row["rm_score"])
                if step + 1 == cfg.steps or (step + 1) % 10 == 0:
                    p = prompts[idx[0]]
                    samples.append({"step": step + 1, "prompt": p if isinstance(p, str) else p[-1]["content"],
                                    "best": g.texts[int(best[0])], "rm": round(scores[int(best[0])].item(), 3)})
        seconds = time.time() - t0
        after = held_out(cfg.steps)
        result = {"steps": cfg.steps, "k": K, "episodes": cfg.steps * cfg.prompts_per_step * K, "seconds": seconds,
                  **{k: row[k] for k in ("loss", "rank_loss", "sft_loss", "rm_score")}}
        heldout = [{"when": w, **r} for w, r in (("start", before), ("end", after)) if r]
        if accelerator.is_main_process:
            lora.save_final(accelerator.unwrap_model(policy), tokenizer, run_dir.sub("model"))
            write_jsonl(run_dir.sub("samples.jsonl"), samples)
            run_dir.plot_metrics({"loss": ["loss", "rank_loss", "sft_loss"], "reward": ["rm_score", "rm_best", "gold"],
                                  "held-out": ["eval_kl", "eval_gold"]})
            run_dir.write_summary("RRHF", {"result": result, "held-out": heldout or "no held-out prompts",
                                           "samples (last)": samples[-4:]}, {"result": result, "heldout": heldout})
    return Path(cfg.out)
