"""Stage 3.2: PPO against a reward model with a per-token KL penalty to the SFT model (InstructGPT).

One iteration (`ppo_step`): generate a rollout batch from the policy; score it with the reward model;
shape per-token rewards -beta * (log pi - log pi_ref) with the RM score added on the last token; GAE;
several epochs of clipped-surrogate updates over minibatches (micro-batches accumulate gradients),
PPO-ptx mixing the pretraining LM loss in with coefficient ptx_coef; the KL controller; log.

Every PPO detail sits in this file; models, data streams and checkpoints come from shared modules. The
world is not imported: callers pass prompts, pretraining text, a gold scorer and hooks in.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rlhf import parallel
from rlhf.data.chat import encode_prompt
from rlhf.data.packing import PtxStream, load_texts
from rlhf.data.prompts import load_prompts
from rlhf.data.sampler import PromptSampler
from rlhf.errors import RLHFError
from rlhf.models import lora
from rlhf.models.options import ModelOptions
from rlhf.models.lm import last_token_index, load_causal_lm, load_tokenizer
from rlhf.models.reward import load_reward_model
from rlhf.models.value import VALUE_INITS, ValueHead, load_value_model
from rlhf.rollout.engine import SamplingConfig, global_rows
from rlhf.rollout.experience import Experience, Models, policy_forward, rollout
from rlhf.train import loop
from rlhf.train.checkpoint import TrainerState
from rlhf.train.common import NonFiniteLoss, OptimConfig, make_accelerator, make_optimizer, masked_mean, no_eos_penalty
from rlhf.train.loop import Hooks, StepOutput, sample_rows
from rlhf.train.watch import ENSEMBLE_MODES, Watch, ensemble_score


@dataclass
class KLConfig:
    beta: float = 0.1  # initial (or fixed) KL coefficient
    adaptive: bool = False  # true: the Ziegler et al. controller moves beta toward `target`
    target: float = 2.0  # nats per response, for the adaptive controller
    horizon: int = 10_000  # episodes over which the controller closes the gap to target


@dataclass
class PPOConfig:
    out: str = "runs/ppo"  # run directory
    seed: int = 0  # seeds the value head, sampling, minibatch order, prompt order and the ptx stream
    model: ModelOptions = field(default_factory=ModelOptions)  # dtype, gradient checkpointing, LoRA
    policy: str = "runs/sft/model"  # also the frozen reference
    reward_model: str = "runs/reward/model"  # a reward-model folder (`rlhf reward`)
    # reward: a value model initialized from the RM; sft: a value model initialized from the SFT backbone;
    # policy: a value head on the policy itself (one backbone pass gives log-probs and values)
    value_init: str = "reward"
    retokenize: bool = False  # RM with a different vocabulary: decode text and re-encode for the RM
    # a reward-model ensemble (Coste et al. 2024): more RMs, trained on other seeds and label splits. PPO
    # optimizes `ensemble_reward` of them: first (reward_model alone; the others are only watched for their
    # disagreement), mean, min (worst case) or uwo (mean - uwo_coef * std across members)
    ensemble: list[str] = field(default_factory=list)
    ensemble_reward: str = "first"  # first | mean | min | uwo (see above)
    uwo_coef: float = 1.0  # uwo: the multiple of the members' std taken off their mean
    # gold-free stops, checked on each new batch before training on it: a KL budget (nats per response, the
    # mean of the last 3 batches; pushed hard on 3 seeds, the gold reward peaked near 1 nat and fell past
    # 3-4 while the RM's score kept rising) and the ensemble's disagreement on the policy's samples rising
    # above disagreement_stop x its value in the first 3 iterations (0: off)
    kl_budget: float = 3.0  # nats per response (0: off)
    disagreement_stop: float = 0.0  # a multiple of the first 3 iterations' disagreement (0: off)
    prompts: str | None = None  # JSONL of {"prompt": str | messages}; `rlhf ppo`: the world's training prompts
    steps: int = 40  # PPO iterations (rollout batches)
    rollout_batch_size: int = 64  # episodes sampled per iteration
    minibatch_size: int = 16  # episodes per optimizer step
    micro_batch_size: int = 16  # episodes per forward/backward (gradient accumulation inside a minibatch)
    ppo_epochs: int = 4  # passes over each rollout batch
    # T = 0.7: a 1M-parameter policy at T = 1 samples garbled text; log-probs use the same temperature
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=24, temperature=0.7))
    kl: KLConfig = field(default_factory=KLConfig)  # the KL penalty's coefficient and its controller
    no_eos_score: float | None = -1.0  # RM score given to responses that never produce EOS (None: keep RM score)
    whiten_rewards: bool = False  # whiten the shaped per-token rewards over the batch (mean kept)
    reward_clip: float = 10.0  # RM scores are clipped to [-reward_clip, reward_clip]
    gamma: float = 1.0  # discount over response tokens
    lam: float = 0.95  # GAE's lambda
    whiten_advantages: str = "minibatch"  # minibatch | batch | none
    cliprange: float = 0.2  # the policy ratio is clipped to [1 - cliprange, 1 + cliprange]
    cliprange_value: float = 0.2  # new values stay within this of the rollout's values (clipped value loss)
    vf_coef: float = 0.1  # weight of the value loss beside the policy loss
    approx_kl_stop: float = 0.5  # stop an iteration's remaining updates when a minibatch's approx-KL exceeds this
    ptx_coef: float = 0.0  # PPO-ptx: weight of the pretraining LM loss
    ptx_data: str | None = None  # JSONL of {"text"} for PPO-ptx; `rlhf ppo`: the world's corpus
    ptx_batch_size: int = 16  # pretraining blocks per micro-batch
    ptx_seq_len: int = 64  # tokens per pretraining block
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, weight_decay=0.0, warmup_steps=0,
                                                                   schedule="linear", betas=(0.9, 0.95)))
    value_lr: float = 3e-4  # the value model's learning rate (its schedule follows optim's)
    save_every: int = 0  # a checkpoint every N steps to resume from (0: only at the end)
    samples_every: int = 10  # the first episodes of every N-th batch go to the sample table
    eval_every: int = 0  # the evaluation hook every N steps and before the first (0: off)
    eval_prompts: int = 128  # held-out prompts the pipeline's evaluation hook uses
    resume: str | None = None  # a checkpoints/step-N folder of an earlier run with the same config

    def validate(self) -> None:
        if self.rollout_batch_size % self.minibatch_size:
            raise RLHFError(f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of minibatch_size "
                            f"({self.minibatch_size})")
        if self.minibatch_size % self.micro_batch_size:
            raise RLHFError(f"minibatch_size ({self.minibatch_size}) must be a multiple of micro_batch_size "
                            f"({self.micro_batch_size})")
        if self.whiten_advantages not in ("minibatch", "batch", "none"):
            raise RLHFError(f"whiten_advantages: expected minibatch, batch or none, got '{self.whiten_advantages}'")
        if self.whiten_advantages == "minibatch" and self.minibatch_size < 8:
            raise RLHFError(f"whitening advantages needs minibatch_size >= 8, got {self.minibatch_size}")
        if self.ensemble_reward not in ENSEMBLE_MODES:
            raise RLHFError(f"ensemble_reward: expected first, mean, min or uwo, got '{self.ensemble_reward}'")
        if self.value_init not in VALUE_INITS:
            raise RLHFError(f"value_init: expected 'reward', 'sft' or 'policy', got '{self.value_init}'")
        self.optim.validate()


# ---------------------------------------------------------------- masked ops, shaping, GAE, KL, losses


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over masked entries; the unbiased variance, as lm-human-preferences."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def batch_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """`masked_whiten` over the global batch: this process's when it is the only one, else every rank's
    (`parallel.whiten`: the mean and unbiased variance of the concatenated batch, in float64)."""
    if parallel.world_size() == 1:
        return masked_whiten(x, mask, shift_mean)
    return parallel.whiten(x, mask, shift_mean) * mask


def shaped_rewards(logp, ref_logp, scores, mask, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -beta * (log pi - log pi_ref) everywhere, + score on the last real token."""
    kl = (logp - ref_logp) * mask
    rewards = -beta * kl
    rewards[torch.arange(len(scores), device=mask.device), last_token_index(mask)] += scores
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalized advantage estimation over response tokens; values past the last token count as 0."""
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    values = values * mask
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last * (mask[:, t + 1] if t + 1 < T else 0)
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


class AdaptiveKL:
    """The KL controllers: fixed beta, or (adaptive) Ziegler et al. (2019):
    beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)."""

    def __init__(self, cfg: KLConfig):
        self.beta, self.cfg = cfg.beta, cfg

    def update(self, kl: float, n_episodes: int) -> None:
        if self.cfg.adaptive:
            error = float(np.clip(kl / self.cfg.target - 1, -0.2, 0.2))
            self.beta *= 1 + error * n_episodes / self.cfg.horizon


def ppo_losses(new_logp, old_logp, advantages, vpred, old_values, returns, mask, cliprange, cliprange_value,
               mean=masked_mean):
    """`mean(x, mask)`: the token mean (on many processes: this rank's share of the global batch's token mean)."""
    ratio = torch.exp(new_logp - old_logp)
    pg = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange))
    pg_loss = mean(pg, mask)
    v_clipped = old_values + (vpred - old_values).clamp(-cliprange_value, cliprange_value)
    vf_loss = 0.5 * mean(torch.max((vpred - returns) ** 2, (v_clipped - returns) ** 2), mask)
    with torch.no_grad():
        log_ratio = (new_logp - old_logp) * mask
        stats = {"clipfrac": mean(((ratio - 1).abs() > cliprange).float(), mask).item(),
                 "approx_kl": mean(torch.exp(log_ratio) - 1 - log_ratio, mask).item(),
                 "vf_clipfrac": mean(((vpred - old_values).abs() > cliprange_value).float(), mask).item()}
    return pg_loss, vf_loss, stats


# ---------------------------------------------------------------- one iteration


def ppo_step(trainer: Trainer, step: int) -> StepOutput:
    """One iteration. On many processes every rank draws the same global batch of prompts and keeps its slice;
    statistics (whitening, the KL controller's input, the stops, the metrics) are over the global batch."""
    cfg, models, batch_size = trainer.cfg, trainer.models, trainer.cfg.rollout_batch_size
    # 1. generate and score
    idx, encoded = trainer.sampler.batch(batch_size)
    idx, encoded = parallel.shard(idx, "rollout_batch_size"), parallel.shard(encoded, "rollout_batch_size")
    with trainer.accelerator.autocast():  # bf16 matmuls under model.mixed_precision=bf16, else a no-op
        exp = rollout(models, [trainer.sampler.prompts[i] for i in idx], encoded, cfg.sampling, trainer.gen_sample,
                      global_rows(len(idx)))
    kl_now = parallel.mean_item(((exp.logp - exp.ref_logp) * exp.mask).sum(1))
    watch = trainer.watch.update(kl_now, exp.member_scores)
    if "stop" in watch:  # a gold-free stop: this batch is not trained on, the policy stays as it is
        return StepOutput(parallel.mean_metrics({"rm_score": exp.scores.mean().item(), "kl": kl_now,
                                                 "response_length": exp.mask.sum(1).mean().item(), **watch}),
                          exp, batch_size)
    # 2. shape: the RM score (a fixed score without EOS, clipped) on the last token, -beta * KL on every token
    scores = (exp.scores if exp.member_scores is None
              else ensemble_score(exp.member_scores, cfg.ensemble_reward, cfg.uwo_coef))
    scores = no_eos_penalty(scores, exp.roll.finished, cfg.no_eos_score).clamp(-cfg.reward_clip, cfg.reward_clip)
    rewards, kl = shaped_rewards(exp.logp, exp.ref_logp, scores, exp.mask, trainer.kl_ctl.beta)
    if cfg.whiten_rewards:
        rewards = batch_whiten(rewards, exp.mask, shift_mean=False)
    # 3. GAE
    advantages, returns = gae(rewards, exp.values, exp.mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages == "batch":
        advantages = batch_whiten(advantages, exp.mask)
    # 4. update: PPO epochs over minibatches
    t_update, trainer.sync_seconds = time.time(), 0.0
    stats = ppo_update(trainer, step, exp, advantages, returns)
    t_update = time.time() - t_update
    trainer.sched_policy.step()
    trainer.sched_value.step()
    # 5. KL controller
    seq_kl = kl.sum(1)
    trainer.kl_ctl.update(parallel.mean_item(seq_kl), batch_size)
    # 6. metrics (the shared loop logs them), over the global batch: means of equal shares averaged over ranks
    mask, values = exp.mask, exp.values
    mean = masked_mean if parallel.world_size() == 1 else parallel.global_mean
    var_ret = mean((returns - mean(returns, mask)) ** 2, mask)
    explained = 1 - mean((returns - values) ** 2, mask) / var_ret.clamp(min=1e-8)
    log_ratio = exp.ref_logp - exp.logp
    gen_seconds = float(parallel.all_max(torch.tensor(exp.gen_seconds, dtype=torch.float64)))  # the slowest rank's
    row = parallel.mean_metrics({
        "rm_score": exp.scores.mean().item(), "kl": seq_kl.mean().item(),
        "kl_k3": (torch.exp(log_ratio) - 1 - log_ratio).mul(mask).sum(1).mean().item(),
        "beta": trainer.kl_ctl.beta, "response_length": mask.sum(1).mean().item(),
        "eos_rate": exp.roll.finished.float().mean().item(), "explained_variance": explained.item(),
        "lr": trainer.sched_policy.get_last_lr()[0], **{k: float(np.mean(v)) for k, v in stats.items() if v},
        **watch})
    row["tokens_per_s"] = float(parallel.all_sum(mask.sum().cpu())) / max(1e-9, gen_seconds)
    # wall seconds of the phases (the slowest rank's): sampling, scoring (log-probs, values, reward model), the
    # update, and within it the gradients' all-reduce (0 for one process)
    row.update(zip(("time_generate", "time_score", "time_update", "time_allreduce"),
                   parallel.all_max(torch.tensor([exp.gen_seconds, exp.score_seconds, t_update, trainer.sync_seconds],
                                                 dtype=torch.float64)).tolist()))
    return StepOutput(row, exp, batch_size)


def ppo_update(trainer: Trainer, step: int, exp: Experience, advantages, returns) -> dict[str, list[float]]:
    """ppo_epochs passes over the batch in shuffled minibatches; an epoch stops early (and the iteration
    with it) when a minibatch's approx-KL exceeds approx_kl_stop. A non-finite loss raises NonFiniteLoss.
    On many processes the batch sizes are global: every rank draws the global batch's order and takes its own
    episodes in that order, minibatch_size / ranks (and micro_batch_size / ranks) of them at a time; whitening,
    token means, the statistics and the early stop are the global minibatch's, the gradients averaged over ranks."""
    cfg, batch_size = trainer.cfg, trainer.cfg.rollout_batch_size
    minibatch_size = parallel.per_rank(cfg.minibatch_size, "minibatch_size")
    micro_batch_size = parallel.per_rank(cfg.micro_batch_size, "micro_batch_size")
    mask = exp.mask
    stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "approx_kl", "vf_clipfrac",
                                                     "entropy", "ptx_loss")}
    updates = 0
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(batch_size, generator=trainer.gen_shuffle)
        if parallel.world_size() > 1:  # this rank's episodes (rows start .. start + n of the global batch), in order
            start, n = parallel.rank() * len(mask), len(mask)
            order = order[(order >= start) & (order < start + n)] - start
        for minibatch in order.split(minibatch_size):
            mb_adv = batch_whiten(advantages[minibatch], mask[minibatch]) if cfg.whiten_advantages == "minibatch" \
                else advantages[minibatch]
            mb_kl = []
            for local, micro in zip(torch.arange(minibatch_size).split(micro_batch_size),
                                    minibatch.split(micro_batch_size)):
                loss, micro_stats = micro_batch_loss(trainer, exp, micro, mb_adv[local], returns)
                if parallel.any_rank(not torch.isfinite(loss)):
                    raise NonFiniteLoss(f"loss became {loss.item()} at step {step + 1} (epoch {epoch}); stopped, "
                                        "earlier checkpoints kept", updates)
                trainer.accelerator.backward(loss * len(micro) / minibatch_size)
                for key, value in micro_stats.items():
                    stats[key].append(value)
                mb_kl.append(micro_stats["approx_kl"])
            t_sync = time.time()
            parallel.average_gradients(trainer.models.policy, trainer.models.value)
            trainer.sync_seconds += time.time() - t_sync
            for model in (trainer.models.policy, trainer.models.value):
                trainer.accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            trainer.opt_policy.step()
            trainer.opt_value.step()
            updates += 1
            trainer.opt_policy.zero_grad(set_to_none=True)
            trainer.opt_value.zero_grad(set_to_none=True)
            if np.mean(mb_kl) > cfg.approx_kl_stop:
                return stats
    return stats


def micro_batch_loss(trainer: Trainer, exp: Experience, micro: torch.Tensor, advantages,
                     returns) -> tuple[torch.Tensor, dict]:
    """The PPO loss (plus the pretraining LM loss under PPO-ptx) of the episodes `micro`, and its statistics.
    On many processes `micro` is this rank's part of a global micro-batch: the token means divide by the global
    micro-batch's token count (the loss is scaled by the number of ranks, whose gradients are averaged), the
    statistics are the global micro-batch's, and the PPO-ptx blocks are this rank's slice of the global draw."""
    cfg, models, roll = trainer.cfg, trainer.models, exp.roll
    prompt_len, mask = roll.prompt_ids.shape[1], exp.mask[micro]
    ranks, mean = parallel.world_size(), masked_mean
    if ranks > 1:
        tokens = parallel.all_sum(mask.sum()).to(mask.dtype).clamp(min=1)
        mean = lambda x, m: (x * m).sum() / tokens  # noqa: E731 - this rank's share of the global token mean
    with trainer.accelerator.autocast():
        new_logp, entropy, vpred = policy_forward(models, roll.input_ids[micro], roll.attention_mask[micro], prompt_len,
                                                  cfg.sampling.temperature, True)
        pg_loss, vf_loss, stats = ppo_losses(new_logp, exp.logp[micro], advantages, vpred.float(), exp.values[micro],
                                             returns[micro], mask, cfg.cliprange, cfg.cliprange_value, mean)
        loss = pg_loss + cfg.vf_coef * vf_loss if ranks == 1 else ranks * (pg_loss + cfg.vf_coef * vf_loss)
        if trainer.ptx is not None:
            block = parallel.shard(trainer.ptx.batch(cfg.ptx_batch_size), "ptx_batch_size")
            block = block.to(trainer.accelerator.device)
            logits = getattr(models.policy, "module", models.policy)(input_ids=block[:, :-1]).logits.float()
            ptx_loss = F.cross_entropy(logits.flatten(0, 1), block[:, 1:].flatten())
            loss = loss + cfg.ptx_coef * ptx_loss
            stats["ptx_loss"] = ptx_loss.item() if ranks == 1 else parallel.mean_item(ptx_loss.detach()[None])
    stats.update(pg_loss=pg_loss.item(), vf_loss=vf_loss.item(), entropy=mean(entropy, mask).item())
    if ranks > 1:  # every rank's share summed: the global micro-batch's token means
        keys = ["pg_loss", "vf_loss", "entropy", "clipfrac", "approx_kl", "vf_clipfrac"]
        stats.update(zip(keys, parallel.all_sum(torch.tensor([stats[k] for k in keys], dtype=torch.float64)).tolist()))
    return loss, stats


# ---------------------------------------------------------------- setup and the loop


@dataclass
class Trainer(loop.Trainer):
    """PPO's state, and what the shared loop (train/loop.py) asks of it."""
    cfg: PPOConfig
    models: Models
    accelerator: object
    opt_policy: torch.optim.Optimizer
    opt_value: torch.optim.Optimizer
    sched_policy: torch.optim.lr_scheduler.LRScheduler
    sched_value: torch.optim.lr_scheduler.LRScheduler
    sampler: PromptSampler
    ptx: PtxStream | None
    kl_ctl: AdaptiveKL
    gen_sample: torch.Generator
    gen_shuffle: torch.Generator
    watch: Watch
    hooks: Hooks = field(default_factory=Hooks)
    sync_seconds: float = 0.0  # this iteration's wall time in the gradients' all-reduce (many processes)
    name = "ppo"
    title = "PPO"
    unit = "episodes"
    bar_fields = {"rm": "rm_score", "gold": "gold", "kl": "kl"}
    summary_samples = 6
    checkpoint_at_end = True
    resume_hint = "value_init differs?"
    plots = {"reward": ["rm_score", "gold"], "kl": ["kl", "kl_k3"], "beta": ["beta"], "losses": ["pg_loss", "vf_loss"],
             "ppo": ["clipfrac", "approx_kl"], "entropy": ["entropy"], "explained_variance": ["explained_variance"],
             "response_length": ["response_length"], "throughput": ["episodes_per_s"],
             "held-out proxy vs gold": ["eval_proxy", "eval_gold"], "held-out KL": ["eval_kl"],
             "reward ensemble": ["ens_mean", "ens_min"], "ensemble disagreement": ["ens_disagreement"],
             "watched rates": ["rate_abstain", "rate_refuse"]}

    @property
    def steps(self) -> int:
        return self.cfg.steps

    def step(self, step: int) -> StepOutput:
        return ppo_step(self, step)

    def state(self) -> TrainerState:
        gens = {"sample": self.gen_sample, "shuffle": self.gen_shuffle,
                **({"ptx": self.ptx.generator} if self.ptx else {})}
        stateful = {"opt_policy": self.opt_policy, "opt_value": self.opt_value, "sched_policy": self.sched_policy,
                    "sched_value": self.sched_value, "prompts": self.sampler.stream}
        return TrainerState({"policy": self.models.policy, "value": self.models.value}, stateful, gens,
                            self.models.tokenizer)

    def scalars(self) -> dict:
        return {"beta": self.kl_ctl.beta, "epoch": self.sampler.stream.epoch, "position": self.sampler.stream.position,
                "watch_kl": self.watch.kl, "watch_disagreement": self.watch.disagreement}

    def restore(self, scalars: dict) -> None:
        self.kl_ctl.beta = scalars.get("beta", self.kl_ctl.beta)
        self.watch.kl, self.watch.disagreement = scalars.get("watch_kl", []), scalars.get("watch_disagreement", [])

    def save_model(self, path: Path) -> None:
        lora.save_final(self.accelerator.unwrap_model(self.models.policy), self.models.tokenizer, path)

    def evaluate(self) -> dict:
        """The caller's evaluate hook on the policy and reference, when eval_every is set."""
        if self.hooks.evaluate is None or not self.cfg.eval_every:
            return {}
        return self.hooks.evaluate(replace(self.models, value=None))

    def sample_rows(self, step: int, out: StepOutput, golds: list[float] | None) -> list[dict]:
        """The first episodes of the global batch (on many processes: rank 0's, then the next ranks')."""
        rows = sample_rows(step, out.batch, golds)
        if parallel.world_size() > 1:
            rows = [row for part in parallel.gather_objects(rows) for row in part][:loop.SAMPLE_ROWS]
        return rows

    def result(self, progress: loop.Progress) -> dict:
        episodes = (progress.done - progress.start) * self.cfg.rollout_batch_size
        seconds, row = time.time() - progress.started, progress.row
        return {"steps": progress.done, "episodes": episodes, "seconds": seconds,
                "episodes_per_s": episodes / max(1e-9, seconds), "final_beta": self.kl_ctl.beta,
                "kl_budget": self.cfg.kl_budget, **self.watch.summary(),
                **{k: row[k] for k in ("rm_score", "gold", "kl", "entropy", "response_length") if k in row}}


def check_reward_models(cfg: PPOConfig, tokenizer, rm_tokenizer):
    """The RM's tokenizer when it must re-encode text (None when it shares the policy's vocabulary)."""
    if tokenizer.get_vocab() == rm_tokenizer.get_vocab():
        rm_tokenizer = None
    elif not cfg.retokenize:
        raise RLHFError("reward model tokenizer does not match the policy's vocabulary "
                        f"({len(rm_tokenizer)} vs {len(tokenizer)} tokens); set retokenize=true to re-encode text for "
                        "it")
    elif cfg.value_init == "reward":
        raise RLHFError("value_init=reward copies the reward model, whose vocabulary differs from the policy's; "
                        "use value_init=sft with retokenize=true")
    if cfg.ensemble_reward != "first" and not cfg.ensemble:  # checked here: the pipeline fills ensemble in late
        raise RLHFError(f"ensemble_reward={cfg.ensemble_reward} needs ensemble: a list of reward-model folders")
    for path in cfg.ensemble:
        if load_tokenizer(path).get_vocab() != (rm_tokenizer or tokenizer).get_vocab():
            raise RLHFError(f"ensemble: {path} reads another vocabulary than reward_model {cfg.reward_model}")
    return rm_tokenizer


def setup(cfg: PPOConfig, prompts: list, ptx_docs: list[str] | None, hooks: Hooks | None = None) -> Trainer:
    tokenizer = load_tokenizer(cfg.policy)
    rm_tokenizer = check_reward_models(cfg, tokenizer, load_tokenizer(cfg.reward_model))
    accelerator = make_accelerator(cfg.seed, mixed_precision=cfg.model.mixed_precision)
    keys = ("rollout_batch_size", "minibatch_size", "micro_batch_size") + (("ptx_batch_size",) * (cfg.ptx_coef > 0))
    for key in keys:
        parallel.per_rank(getattr(cfg, key), key)  # global batch sizes: each must divide over the processes
    policy = lora.trainable(load_causal_lm(cfg.policy), cfg.model, cfg.seed)
    ref = lora.reference(policy, cfg.policy, cfg.policy, cfg.model, load_causal_lm)  # LoRA: the policy, adapters off
    reward = lora.frozen(load_reward_model(cfg.reward_model), cfg.model)
    ensemble = [lora.frozen(load_reward_model(path), cfg.model).to(accelerator.device) for path in cfg.ensemble]
    value = load_value_model(cfg.value_init, cfg.reward_model, cfg.policy, policy, cfg.seed)
    if not isinstance(value, ValueHead):  # a separate value model: LoRA'd too when the policy is (its own adapter)
        value = lora.trainable(value, cfg.model, cfg.seed + 4, task="SEQ_CLS")
    opt_policy, sched_policy = make_optimizer(policy, cfg.optim, cfg.steps)
    opt_value, sched_value = make_optimizer(value, replace(cfg.optim, lr=cfg.value_lr), cfg.steps)
    policy, value, opt_policy, opt_value = accelerator.prepare(policy, value, opt_policy, opt_value)
    models = Models(policy, ref.to(accelerator.device), reward.to(accelerator.device), value, tokenizer, rm_tokenizer,
                    ensemble)
    for model in (models.policy, models.ref, models.reward, models.value):
        model.eval()  # no dropout anywhere during RL
    ptx = PtxStream(tokenizer, ptx_docs, cfg.ptx_seq_len, cfg.seed) if cfg.ptx_coef > 0 else None
    gens = [torch.Generator().manual_seed(cfg.seed + k) for k in (1, 2, 3)]  # sampling, minibatch order, prompts
    sampler = PromptSampler(prompts, lambda p: encode_prompt(tokenizer, p), gens[2])
    return Trainer(cfg, models, accelerator, opt_policy, opt_value, sched_policy, sched_value, sampler, ptx,
                   AdaptiveKL(cfg.kl), gens[0], gens[1], Watch(cfg.kl_budget, cfg.disagreement_stop), hooks or Hooks())


def run(cfg: PPOConfig, show_progress: bool = True, *, prompts: list | None = None, ptx_docs: list[str] | None = None,
        **hooks) -> Path:
    """PPO on `prompts` (or the `prompts` file), PPO-ptx on `ptx_docs` (or `ptx_data`); `hooks`: see loop.Hooks."""
    cfg.validate()
    prompts = load_prompts(cfg.prompts) if cfg.prompts else prompts
    if not prompts:
        raise RLHFError("PPO needs at least one prompt; the prompt set is empty")
    ptx_docs = load_texts(cfg.ptx_data) if cfg.ptx_data else ptx_docs
    if cfg.ptx_coef > 0 and not ptx_docs:
        raise RLHFError("ptx_coef > 0 needs pretraining text: set ptx_data to a JSONL file of {\"text\": ...}")
    hooks = Hooks(**hooks)
    return loop.run(setup(cfg, prompts, ptx_docs, hooks), hooks, show_progress)
