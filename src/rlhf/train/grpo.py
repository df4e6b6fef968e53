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

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf.data.jsonl import write_jsonl
from rlhf.errors import RLHFError
from rlhf.models import lora
from rlhf.progress import progress_bar
from rlhf.rollout.packed import packed_logprobs
from rlhf.rundir import RunDir
from rlhf.train.common import OptimConfig, check_finite
from rlhf.train.heldout import GoldFn
from rlhf.train.sampling import GroupRunConfig, sample_groups, setup_group_trainer


@dataclass
class GRPOConfig(GroupRunConfig):
    out: str = "runs/grpo"
    estimator: str = "grpo"  # grpo | rloo
    steps: int = 40
    prompts_per_step: int = 16
    group_size: int = 4  # responses per prompt
    micro_batch_prompts: int = 16  # prompts (with their groups) per forward/backward
    epochs: int = 1  # updates per batch (GRPO's mu); 1: ratio = 1, no old-policy pass needed
    kl_mode: str = "loss"  # loss: beta * k3 per token in the loss | reward: beta * sum log-ratio off the reward
    beta: float = 0.04
    scale_rewards: bool = True  # grpo: divide by the group's std
    cliprange: float = 0.2
    loss_agg: str = "sequence"  # sequence: mean over each response's tokens, then over responses | token: over all tokens
    reward_clip: float = 10.0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, weight_decay=0.0, warmup_steps=0,
                                                                   schedule="linear", betas=(0.9, 0.95)))
    eval_every: int = 0  # held-out KL / gold every N steps (0: before and after training only)
    samples_every: int = 10


@dataclass
class RLOOConfig(GRPOConfig):
    out: str = "runs/rloo"
    estimator: str = "rloo"
    kl_mode: str = "reward"


# ---------------------------------------------------------------- the pieces the tests check


def group_advantages(rewards: torch.Tensor, estimator: str, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """rewards: (n_prompts, G). Identical rewards in a group give zero advantages (never NaN)."""
    G = rewards.shape[1]
    if G < 2:
        raise RLHFError(f"group_size must be at least 2 (a group baseline compares responses to one prompt), got {G}")
    mean = rewards.mean(1, keepdim=True)
    if estimator == "rloo":
        return (rewards - mean) * G / (G - 1)  # r_i - mean of the other G - 1
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
    if cfg.loss_agg == "token":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    else:
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        stats = {"clipfrac": (((ratio - 1).abs() > cfg.cliprange).float() * mask).sum().item() / n.item(),
                 "kl_k3": ((k3 * mask).sum(1)).mean().item()}
    return loss, stats


def check_config(cfg: GRPOConfig) -> None:
    if cfg.group_size < 2:
        raise RLHFError(f"group_size must be at least 2 (a group baseline compares responses to one prompt), "
                        f"got {cfg.group_size}")
    for key, value, allowed in (("estimator", cfg.estimator, ("grpo", "rloo")), ("kl_mode", cfg.kl_mode, ("loss", "reward")),
                                ("loss_agg", cfg.loss_agg, ("sequence", "token"))):
        if value not in allowed:
            raise RLHFError(f"{key}: expected {' or '.join(allowed)}, got '{value}'")
    if cfg.prompts_per_step % cfg.micro_batch_prompts:
        raise RLHFError(f"prompts_per_step ({cfg.prompts_per_step}) must be a multiple of micro_batch_prompts "
                        f"({cfg.micro_batch_prompts})")
    if cfg.epochs < 1:
        raise RLHFError(f"epochs must be at least 1, got {cfg.epochs}")


# ---------------------------------------------------------------- the loop


def run(cfg: GRPOConfig, show_progress: bool = True, gold: GoldFn | None = None, prompts: list | None = None,
        eval_prompts: list | None = None) -> Path:
    """`gold`: optional (prompt, response) -> gold reward, logged for training samples and held-out prompts.
    `prompts` / `eval_prompts`: prompt lists that replace the configured JSONL files."""
    check_config(cfg)
    setup = setup_group_trainer(cfg, prompts, eval_prompts, cfg.steps)
    prompts, tokenizer, accelerator = setup.prompts, setup.tokenizer, setup.accelerator
    policy, ref, reward_model = setup.policy, setup.ref, setup.reward_model
    opt, sched, encoded, gen_sample, gen_prompts = setup.opt, setup.sched, setup.encoded, setup.gen_sample, setup.gen_order
    order: list[int] = []
    G, T = cfg.group_size, cfg.sampling.temperature
    pad = tokenizer.pad_token_id
    with RunDir(cfg.out, cfg) as run_dir:
        def held_out(step: int) -> dict:
            return setup.held_out(cfg, run_dir, step, gold)

        before = held_out(0)
        t0, c0, episodes, samples = time.time(), time.process_time(), 0, []
        with progress_bar(cfg.estimator, cfg.steps, show_progress and accelerator.is_main_process) as bar:
            for step in range(cfg.steps):
                while len(order) < cfg.prompts_per_step:
                    order += torch.randperm(len(prompts), generator=gen_prompts).tolist()
                idx, order = order[: cfg.prompts_per_step], order[cfg.prompts_per_step:]
                # ---- sample G responses per prompt, score them
                with accelerator.autocast():  # bf16 matmuls under model.mixed_precision=bf16, else a no-op
                    groups = sample_groups(policy, reward_model, tokenizer, [encoded[i] for i in idx], G, cfg.sampling,
                                           gen_sample)
                roll, raw = groups.roll, groups.scores
                scores = raw if cfg.no_eos_score is None else torch.where(roll.finished, raw, torch.full_like(raw, cfg.no_eos_score))
                scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
                # ---- log-probs: one packed forward per micro-batch (prompt once per group)
                rows_per_mb, old_logp, ref_logp, seq_kl = [], [], [], []
                with torch.no_grad(), accelerator.autocast():
                    for m0 in range(0, len(idx), cfg.micro_batch_prompts):
                        rows = groups.rows([encoded[i] for i in idx], m0, m0 + cfg.micro_batch_prompts)
                        rows_per_mb.append(rows)
                        r_lp, mask = packed_logprobs(ref, rows, pad, T)
                        ref_logp.append(r_lp)
                        if cfg.epochs > 1 or cfg.kl_mode == "reward":
                            o_lp, _ = packed_logprobs(policy, rows, pad, T)
                            old_logp.append(o_lp)
                            seq_kl.append(((o_lp - r_lp) * mask).sum(1))
                kl_seq = torch.cat(seq_kl) if seq_kl else None
                rewards = scores - cfg.beta * kl_seq if cfg.kl_mode == "reward" else scores
                adv = group_advantages(rewards.view(-1, G), cfg.estimator, cfg.scale_rewards).flatten()
                # ---- update(s)
                stats: dict[str, list[float]] = {"loss": [], "clipfrac": [], "kl_k3": [], "kl": []}
                n_tokens = roll.response_mask.sum().float()
                for _ in range(cfg.epochs):
                    for mb, rows in enumerate(rows_per_mb):
                        sl = slice(mb * cfg.micro_batch_prompts * G, (mb + 1) * cfg.micro_batch_prompts * G)
                        with accelerator.autocast():
                            logp, mask = packed_logprobs(policy, rows, pad, T)
                        old = old_logp[mb] if old_logp else logp.detach()
                        loss, s = policy_loss(logp, old, ref_logp[mb], adv[sl], mask, cfg)
                        check_finite(loss, step)
                        # micro-batches add up to the whole batch's mean (over responses, or over tokens)
                        share = mask.sum() / n_tokens if cfg.loss_agg == "token" else mask.shape[0] / (len(idx) * G)
                        accelerator.backward(loss * share)
                        stats["loss"].append(loss.item())
                        stats["clipfrac"].append(s["clipfrac"])
                        stats["kl_k3"].append(s["kl_k3"])
                        stats["kl"].append(((logp.detach() - ref_logp[mb]) * mask).sum(1).mean().item())
                    grad_norm = accelerator.clip_grad_norm_(policy.parameters(), cfg.optim.grad_clip)
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                sched.step()
                episodes += len(idx) * G
                by_group = scores.view(-1, G)
                row = {"rm_score": raw.mean().item(), "reward": rewards.mean().item(),
                       "group_std": by_group.std(1).mean().item(),
                       "zero_std_groups": (by_group.std(1) == 0).float().mean().item(),
                       "response_length": roll.response_mask.float().sum(1).mean().item(),
                       "eos_rate": roll.finished.float().mean().item(), "grad_norm": float(grad_norm),
                       "lr": sched.get_last_lr()[0], "episodes_per_s": episodes / (time.time() - t0),
                       **{k: sum(v) / len(v) for k, v in stats.items()}}
                golds = None
                if gold is not None:
                    golds = [gold(prompts[i], t) for i, t in zip([i for i in idx for _ in range(G)], groups.texts)]
                    row["gold"] = sum(golds) / len(golds)
                run_dir.log(step + 1, **row)
                bar.advance(rm=row["rm_score"], kl=row["kl"])
                if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                    held_out(step + 1)
                if cfg.samples_every and ((step + 1) % cfg.samples_every == 0 or step + 1 == cfg.steps):
                    for j in range(min(2 * G, len(groups.texts))):
                        p = prompts[idx[j // G]]
                        samples.append({"step": step + 1, "prompt": p if isinstance(p, str) else p[-1]["content"],
                                        "response": groups.texts[j], "rm": round(raw[j].item(), 3),
                                        "advantage": round(adv[j].item(), 3),
                                        **({"gold": round(golds[j], 3)} if golds else {})})
        seconds, cpu_seconds = time.time() - t0, time.process_time() - c0
        after = held_out(cfg.steps)
        result = {"estimator": cfg.estimator, "kl_mode": cfg.kl_mode, "steps": cfg.steps, "episodes": episodes,
                  "seconds": seconds, "cpu_seconds": cpu_seconds, "episodes_per_s": episodes / seconds,
                  **{k: row[k] for k in ("rm_score", "kl", "response_length", "eos_rate") if k in row}}
        heldout = [{"when": w, **r} for w, r in (("start", before), ("end", after)) if r]
        if accelerator.is_main_process:
            lora.save_final(accelerator.unwrap_model(policy), tokenizer, run_dir.sub("model"))
            write_jsonl(run_dir.sub("samples.jsonl"), samples)
            run_dir.plot_metrics({"reward": ["rm_score", "reward", "gold"], "kl": ["kl", "kl_k3"], "loss": ["loss"],
                                  "clipfrac": ["clipfrac"], "group": ["group_std", "zero_std_groups"],
                                  "response_length": ["response_length"], "held-out": ["eval_kl", "eval_gold"],
                                  "throughput": ["episodes_per_s"]})
            run_dir.write_summary(cfg.estimator.upper(), {"result": result, "held-out": heldout or "no held-out prompts",
                                                          "samples (last)": samples[-6:]},
                                  {"result": result, "heldout": heldout})
    return Path(cfg.out)
