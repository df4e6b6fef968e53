"""Stage 3.2: PPO against a reward model with a per-token KL penalty to the SFT model (InstructGPT).

One iteration: sample a rollout batch from the policy; score it with the reward model; per-token
reward -beta * (log pi - log pi_ref) with the RM score added on the last token; GAE; then several
epochs of clipped-surrogate updates over minibatches (micro-batches accumulate gradients). PPO-ptx
mixes the pretraining LM loss in with coefficient ptx_coef. Every detail sits in this file.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rlhf.data.chat import decode_response, encode_prompt
from rlhf.data.jsonl import read_jsonl, write_jsonl
from rlhf.errors import RLHFError
from rlhf.eval.drift import proxy_gold_kl
from rlhf.models.lm import load_causal_lm, load_tokenizer, save_model
from rlhf.models.reward import load_reward_model, score as rm_score
from rlhf.progress import progress_bar
from rlhf.rollout.engine import SamplingConfig, logprobs_from_logits, position_ids, response_logprobs, sample
from rlhf.rundir import RunDir
from rlhf.train.common import OptimConfig, make_accelerator, make_optimizer
from rlhf.world import World, WorldConfig


@dataclass
class KLConfig:
    beta: float = 0.1  # initial (or fixed) KL coefficient
    adaptive: bool = False
    target: float = 2.0  # nats per response, for the adaptive controller
    horizon: int = 10_000


@dataclass
class PPOConfig:
    out: str = "runs/ppo"
    seed: int = 0
    policy: str = "runs/sft/model"  # also the frozen reference
    reward_model: str = "runs/reward/model"
    # reward: a value model initialized from the RM; sft: a value model initialized from the SFT backbone;
    # policy: a value head on the policy itself (one backbone pass gives log-probs and values)
    value_init: str = "reward"
    retokenize: bool = False  # RM with a different vocabulary: decode text and re-encode for the RM
    world: WorldConfig = field(default_factory=WorldConfig)
    prompts: str | None = None  # JSONL of {"prompt": str | messages}; default: the world's training prompts
    steps: int = 40  # PPO iterations (rollout batches)
    rollout_batch_size: int = 64  # episodes sampled per iteration
    minibatch_size: int = 16  # episodes per optimizer step
    micro_batch_size: int = 16  # episodes per forward/backward (gradient accumulation inside a minibatch)
    ppo_epochs: int = 4
    # T = 0.7: a 1M-parameter policy at T = 1 samples garbled text; log-probs use the same temperature
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=24, temperature=0.7))
    kl: KLConfig = field(default_factory=KLConfig)
    no_eos_score: float | None = -1.0  # RM score given to responses that never produce EOS (None: keep RM score)
    whiten_rewards: bool = False
    reward_clip: float = 10.0
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: str = "minibatch"  # minibatch | batch | none
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    approx_kl_stop: float = 0.5  # stop an epoch's remaining minibatches when approx-KL exceeds this
    ptx_coef: float = 0.0  # PPO-ptx: weight of the pretraining LM loss
    ptx_batch_size: int = 16
    ptx_seq_len: int = 64
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5, weight_decay=0.0, warmup_steps=0,
                                                                   schedule="linear", betas=(0.9, 0.95)))
    value_lr: float = 3e-4
    save_every: int = 0  # 0: only at the end
    samples_every: int = 10
    eval_every: int = 0  # proxy/gold/KL on held-out prompts every N steps, and before the first (0: off)
    eval_prompts: int = 128
    resume: str | None = None  # a checkpoints/step-N folder of an earlier run with the same config


# ---------------------------------------------------------------- the pieces the tests check


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1) if dim is not None else (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over masked entries; the unbiased variance, as lm-human-preferences."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def shaped_rewards(logp: torch.Tensor, ref_logp: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                   beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -beta * (log pi - log pi_ref) everywhere, + score on the last real token."""
    kl = (logp - ref_logp) * mask
    rewards = -beta * kl
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(1)
    rewards[torch.arange(len(scores), device=mask.device), last] += scores
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
    """Ziegler et al. (2019): beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)."""

    def __init__(self, cfg: KLConfig):
        self.beta, self.cfg = cfg.beta, cfg

    def update(self, kl: float, n_episodes: int) -> None:
        if self.cfg.adaptive:
            error = float(np.clip(kl / self.cfg.target - 1, -0.2, 0.2))
            self.beta *= 1 + error * n_episodes / self.cfg.horizon


def ppo_losses(new_logp, old_logp, advantages, vpred, old_values, returns, mask, cliprange, cliprange_value):
    ratio = torch.exp(new_logp - old_logp)
    pg = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange))
    pg_loss = masked_mean(pg, mask)
    v_clipped = old_values + (vpred - old_values).clamp(-cliprange_value, cliprange_value)
    vf_loss = 0.5 * masked_mean(torch.max((vpred - returns) ** 2, (v_clipped - returns) ** 2), mask)
    with torch.no_grad():
        log_ratio = (new_logp - old_logp) * mask
        stats = {"clipfrac": masked_mean(((ratio - 1).abs() > cliprange).float(), mask).item(),
                 "approx_kl": masked_mean(torch.exp(log_ratio) - 1 - log_ratio, mask).item(),
                 "vf_clipfrac": masked_mean(((vpred - old_values).abs() > cliprange_value).float(), mask).item()}
    return pg_loss, vf_loss, stats


# ---------------------------------------------------------------- models and data


def token_values(value_model, input_ids, attention_mask, response_start: int) -> torch.Tensor:
    """V(s_t) for every response position: the head on the hidden state that predicts token t."""
    hidden = value_model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    position_ids=position_ids(attention_mask)).last_hidden_state
    head = value_model.score if hasattr(value_model, "score") else value_model.classifier
    return head(hidden[:, response_start - 1:-1]).squeeze(-1)


class ValueHead(torch.nn.Linear):
    """value_init=policy: a scalar head on the policy's last hidden state, zero at the start."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size, 1)
        torch.nn.init.zeros_(self.weight)
        torch.nn.init.zeros_(self.bias)


def logprobs_and_values(policy, head: ValueHead, input_ids, attention_mask, response_start: int,
                        temperature: float, with_entropy: bool = False):
    """One backbone pass: the response's log-probs (and entropies) and V(s_t) from the shared head."""
    hidden = policy.base_model(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids(attention_mask)).last_hidden_state[:, response_start - 1:-1]
    out = logprobs_from_logits(policy.get_output_embeddings()(hidden), input_ids[:, response_start:], temperature,
                               with_entropy)
    values = head(hidden).squeeze(-1)
    return (*out, values) if with_entropy else (out, values)


def load_value_model(cfg: PPOConfig, policy=None):
    from rlhf.models.reward import init_reward_model

    if cfg.value_init not in ("reward", "sft", "policy"):
        raise RLHFError(f"value_init: expected 'reward', 'sft' or 'policy', got '{cfg.value_init}'")
    if cfg.value_init == "policy":
        return ValueHead(policy.config.hidden_size)
    model = load_reward_model(cfg.reward_model) if cfg.value_init == "reward" else init_reward_model(cfg.policy, cfg.seed)
    head = model.score if hasattr(model, "score") else model.classifier
    torch.nn.init.zeros_(head.weight)  # value head starts at zero output
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    return model


def load_prompts(cfg: PPOConfig, world: World) -> list:
    if cfg.prompts is None:
        prompts = [p["prompt"] for p in world.prompts("train")]
    else:
        prompts = []
        for lineno, obj in read_jsonl(cfg.prompts):
            p = obj.get("prompt", obj.get("messages"))
            if not p:
                raise RLHFError(f"{cfg.prompts}:{lineno}: missing 'prompt' (string or messages)")
            prompts.append(p)
    if not prompts:
        raise RLHFError("PPO needs at least one prompt; the prompt set is empty")
    return prompts


def check_batch_sizes(cfg: PPOConfig) -> None:
    if cfg.rollout_batch_size % cfg.minibatch_size:
        raise RLHFError(f"rollout_batch_size ({cfg.rollout_batch_size}) must be a multiple of minibatch_size ({cfg.minibatch_size})")
    if cfg.minibatch_size % cfg.micro_batch_size:
        raise RLHFError(f"minibatch_size ({cfg.minibatch_size}) must be a multiple of micro_batch_size ({cfg.micro_batch_size})")
    if cfg.whiten_advantages not in ("minibatch", "batch", "none"):
        raise RLHFError(f"whiten_advantages: expected minibatch, batch or none, got '{cfg.whiten_advantages}'")
    if cfg.whiten_advantages == "minibatch" and cfg.minibatch_size < 8:
        raise RLHFError(f"whitening advantages needs minibatch_size >= 8, got {cfg.minibatch_size}")


def check_vocab(policy_tok, rm_tok, retokenize: bool) -> bool:
    """True when the RM needs re-tokenized input."""
    if policy_tok.get_vocab() == rm_tok.get_vocab():
        return False
    if not retokenize:
        raise RLHFError("reward model tokenizer does not match the policy's vocabulary "
                        f"({len(rm_tok)} vs {len(policy_tok)} tokens); set retokenize=true to re-encode text for it")
    return True


class PtxStream:
    """Batches of pretraining text for PPO-ptx, drawn with their own generator."""

    def __init__(self, tokenizer, docs: list[str], seq_len: int, seed: int):
        from rlhf.train.pretrain import pack

        self.blocks = pack(tokenizer, docs, seq_len)
        self.generator = torch.Generator().manual_seed(seed + 7)

    def batch(self, n: int) -> torch.Tensor:
        return self.blocks[torch.randint(len(self.blocks), (n,), generator=self.generator)]


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, step: int, policy, value_model, tokenizer, opt_p, opt_v, sched_p, sched_v,
                    kl: AdaptiveKL, cursor: dict, generators: dict, ptx: PtxStream | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    save_model(policy, tokenizer, path / "policy")
    if isinstance(value_model, ValueHead):
        (path / "value").mkdir(exist_ok=True)
        save_file(value_model.state_dict(), str(path / "value" / "model.safetensors"))
    else:
        value_model.save_pretrained(str(path / "value"), safe_serialization=True)
    torch.save({"opt_policy": opt_p.state_dict(), "opt_value": opt_v.state_dict(), "sched_policy": sched_p.state_dict(),
                "sched_value": sched_v.state_dict(), "python_rng": random.getstate(), "numpy_rng": np.random.get_state(),
                "torch_rng": torch.get_rng_state(), "generators": {k: g.get_state() for k, g in generators.items()},
                "ptx_generator": ptx.generator.get_state() if ptx else None}, path / "trainer_state.pt")
    (path / "state.json").write_text(json.dumps({"step": step, "beta": kl.beta, **cursor}))


# ---------------------------------------------------------------- the loop


def run(cfg: PPOConfig, show_progress: bool = True) -> Path:
    check_batch_sizes(cfg)
    world = World(cfg.world)
    prompts = load_prompts(cfg, world)
    tokenizer = load_tokenizer(cfg.policy)
    rm_tokenizer = load_tokenizer(cfg.reward_model)
    retok = check_vocab(tokenizer, rm_tokenizer, cfg.retokenize)
    if retok and cfg.value_init == "reward":
        raise RLHFError("value_init=reward copies the reward model, whose vocabulary differs from the policy's; "
                        "use value_init=sft with retokenize=true")
    accelerator = make_accelerator(cfg.seed)
    policy, ref = load_causal_lm(cfg.policy), load_causal_lm(cfg.policy)
    reward_model = load_reward_model(cfg.reward_model)
    value_model = load_value_model(cfg, policy)
    shared = isinstance(value_model, ValueHead)
    for m in (ref, reward_model):
        m.requires_grad_(False)
    steps = cfg.steps
    opt_p, sched_p = make_optimizer(policy, cfg.optim, steps)
    value_optim = OptimConfig(**{**cfg.optim.__dict__, "lr": cfg.value_lr})
    opt_v, sched_v = make_optimizer(value_model, value_optim, steps)
    policy, value_model, opt_p, opt_v = accelerator.prepare(policy, value_model, opt_p, opt_v)
    ref, reward_model = ref.to(accelerator.device), reward_model.to(accelerator.device)
    for m in (policy, ref, reward_model, value_model):
        m.eval()  # no dropout anywhere during RL
    kl_ctl = AdaptiveKL(cfg.kl)
    gen_sample = torch.Generator().manual_seed(cfg.seed + 1)
    gen_shuffle = torch.Generator().manual_seed(cfg.seed + 2)
    gen_prompts = torch.Generator().manual_seed(cfg.seed + 3)
    ptx = PtxStream(tokenizer, world.corpus(), cfg.ptx_seq_len, cfg.seed) if cfg.ptx_coef > 0 else None
    cursor = {"order": torch.randperm(len(prompts), generator=gen_prompts).tolist(), "position": 0, "epoch": 0}
    start = 0
    if cfg.resume:
        start = _resume(cfg.resume, policy, value_model, opt_p, opt_v, sched_p, sched_v, kl_ctl, cursor,
                        {"sample": gen_sample, "shuffle": gen_shuffle, "prompts": gen_prompts}, ptx, accelerator)
        if start >= steps:
            raise RLHFError(f"resume: {cfg.resume} is at step {start}, and this run has steps={steps}: nothing to do")
    encoded_prompts = [encode_prompt(tokenizer, p) for p in prompts]
    B = cfg.rollout_batch_size
    stopped = None
    held_out = world.prompts("eval")[: cfg.eval_prompts]

    def drift(step: int) -> None:
        if cfg.eval_every and (step == 0 or step % cfg.eval_every == 0 or step == steps):
            d = proxy_gold_kl(policy, ref, reward_model, tokenizer, world, held_out, cfg.sampling, cfg.seed)
            run_dir.log(step, **{f"eval_{k}": v for k, v in d.items()})

    with RunDir(cfg.out, cfg) as run_dir:
        t0, episodes, samples_table = time.time(), 0, []
        if start == 0:
            drift(0)
        with progress_bar("ppo", steps - start, show_progress and accelerator.is_main_process) as bar:
            for step in range(start, steps):
                # ---- 1. prompts (data position is part of the checkpoint)
                idx = []
                while len(idx) < B:
                    if cursor["position"] >= len(cursor["order"]):
                        cursor.update(order=torch.randperm(len(prompts), generator=gen_prompts).tolist(), position=0,
                                      epoch=cursor["epoch"] + 1)
                    take = cursor["order"][cursor["position"]: cursor["position"] + B - len(idx)]
                    idx += take
                    cursor["position"] += len(take)
                # ---- 2. rollout
                t_roll = time.time()
                roll = sample(policy, [encoded_prompts[i] for i in idx], cfg.sampling, tokenizer.eos_token_id,
                              tokenizer.pad_token_id, gen_sample)
                gen_seconds = time.time() - t_roll
                ids, attn = roll.input_ids, roll.attention_mask
                P, mask = roll.prompt_ids.shape[1], roll.response_mask.float()
                texts = [decode_response(tokenizer, r.tolist()) for r in roll.response_ids]
                with torch.no_grad():
                    if shared:
                        old_logp, old_values = logprobs_and_values(policy, value_model, ids, attn, P, cfg.sampling.temperature)
                    else:
                        old_logp = response_logprobs(policy, ids, attn, P, cfg.sampling.temperature)
                        old_values = token_values(value_model, ids, attn, P)
                    old_logp, old_values = old_logp * mask, old_values * mask
                    ref_logp = response_logprobs(ref, ids, attn, P, cfg.sampling.temperature) * mask
                    if retok:
                        from rlhf.data.chat import encode_prompt_response
                        from rlhf.rollout.engine import left_pad

                        rm_ids, rm_mask = left_pad([encode_prompt_response(rm_tokenizer, prompts[i], t, 512)
                                                    for i, t in zip(idx, texts)], rm_tokenizer.pad_token_id)
                        scores = rm_score(reward_model, rm_ids, rm_mask)
                    else:
                        scores = rm_score(reward_model, ids, attn)
                raw_rm = scores.clone()
                if cfg.no_eos_score is not None:
                    scores = torch.where(roll.finished, scores, torch.full_like(scores, cfg.no_eos_score))
                scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
                rewards, kl = shaped_rewards(old_logp, ref_logp, scores, mask, kl_ctl.beta)
                if cfg.whiten_rewards:
                    rewards = masked_whiten(rewards, mask, shift_mean=False)
                advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
                if cfg.whiten_advantages == "batch":
                    advantages = masked_whiten(advantages, mask)
                # ---- 3. PPO epochs over minibatches
                updates_in_step = 0
                stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "approx_kl",
                                                                 "vf_clipfrac", "entropy", "ptx_loss")}
                for epoch in range(cfg.ppo_epochs):
                    perm = torch.randperm(B, generator=gen_shuffle)
                    early_stop = False
                    for mb_start in range(0, B, cfg.minibatch_size):
                        mb = perm[mb_start: mb_start + cfg.minibatch_size]
                        mb_adv = advantages[mb]
                        if cfg.whiten_advantages == "minibatch":
                            mb_adv = masked_whiten(mb_adv, mask[mb])
                        mb_kl = []
                        for mc_start in range(0, cfg.minibatch_size, cfg.micro_batch_size):
                            mc = mb[mc_start: mc_start + cfg.micro_batch_size]
                            local = slice(mc_start, mc_start + cfg.micro_batch_size)
                            if shared:
                                new_logp, entropy, vpred = logprobs_and_values(policy, value_model, ids[mc], attn[mc], P,
                                                                               cfg.sampling.temperature, True)
                            else:
                                new_logp, entropy = response_logprobs(policy, ids[mc], attn[mc], P,
                                                                      cfg.sampling.temperature, True)
                                vpred = token_values(value_model, ids[mc], attn[mc], P)
                            pg_loss, vf_loss, s = ppo_losses(new_logp, old_logp[mc], mb_adv[local], vpred, old_values[mc],
                                                             returns[mc], mask[mc], cfg.cliprange, cfg.cliprange_value)
                            loss = pg_loss + cfg.vf_coef * vf_loss
                            if ptx is not None:
                                blk = ptx.batch(cfg.ptx_batch_size).to(accelerator.device)
                                logits = policy(input_ids=blk[:, :-1]).logits
                                ptx_loss = F.cross_entropy(logits.flatten(0, 1), blk[:, 1:].flatten())
                                loss = loss + cfg.ptx_coef * ptx_loss
                                stats["ptx_loss"].append(ptx_loss.item())
                            if not torch.isfinite(loss):
                                stopped = f"loss became {loss.item()} at step {step + 1} (epoch {epoch}); stopped, earlier checkpoints kept"
                                break
                            accelerator.backward(loss * len(mc) / cfg.minibatch_size)
                            for key, v in (("pg_loss", pg_loss.item()), ("vf_loss", vf_loss.item()),
                                           ("entropy", masked_mean(entropy, mask[mc]).item()), *s.items()):
                                stats[key].append(v)
                            mb_kl.append(s["approx_kl"])
                        if stopped:
                            break
                        accelerator.clip_grad_norm_(policy.parameters(), cfg.optim.grad_clip)
                        accelerator.clip_grad_norm_(value_model.parameters(), cfg.optim.grad_clip)
                        opt_p.step()
                        opt_v.step()
                        updates_in_step += 1
                        opt_p.zero_grad(set_to_none=True)
                        opt_v.zero_grad(set_to_none=True)
                        if np.mean(mb_kl) > cfg.approx_kl_stop:
                            early_stop = True
                            break
                    if early_stop or stopped:
                        break
                if stopped:
                    opt_p.zero_grad(set_to_none=True)
                    break
                sched_p.step()
                sched_v.step()
                # ---- 4. KL controller, metrics
                seq_kl = kl.sum(1)
                kl_ctl.update(seq_kl.mean().item(), B)
                episodes += B
                gold = [world.score(prompts[i], t).total for i, t in zip(idx, texts)]
                var_ret = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
                explained = 1 - masked_mean((returns - old_values) ** 2, mask) / var_ret.clamp(min=1e-8)
                row = {"rm_score": raw_rm.mean().item(), "gold": float(np.mean(gold)), "kl": seq_kl.mean().item(),
                       "kl_k3": (torch.exp(ref_logp - old_logp) - 1 - (ref_logp - old_logp)).mul(mask).sum(1).mean().item(),
                       "beta": kl_ctl.beta, "response_length": mask.sum(1).mean().item(),
                       "eos_rate": roll.finished.float().mean().item(), "explained_variance": explained.item(),
                       "lr": sched_p.get_last_lr()[0], "episodes_per_s": episodes / (time.time() - t0),
                       "tokens_per_s": mask.sum().item() / max(1e-9, gen_seconds),
                       **{k: float(np.mean(v)) for k, v in stats.items() if v}}
                run_dir.log(step + 1, **row)
                drift(step + 1)
                bar.advance(rm=row["rm_score"], gold=row["gold"], kl=row["kl"])
                if cfg.samples_every and ((step + 1) % cfg.samples_every == 0 or step + 1 == steps):
                    samples_table += [{"step": step + 1, "prompt": prompts[i] if isinstance(prompts[i], str) else prompts[i][-1]["content"],
                                       "response": t, "rm": round(s, 3), "gold": round(g, 3)}
                                      for i, t, s, g in list(zip(idx, texts, raw_rm.tolist(), gold))[:6]]
                if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < steps:
                    save_checkpoint(run_dir.sub(f"checkpoints/step-{step + 1}"), step + 1, accelerator.unwrap_model(policy),
                                    accelerator.unwrap_model(value_model), tokenizer, opt_p, opt_v, sched_p, sched_v,
                                    kl_ctl, cursor, {"sample": gen_sample, "shuffle": gen_shuffle, "prompts": gen_prompts}, ptx)
        last_step = step + (0 if stopped else 1)
        # a step stopped after some of its updates left the policy half-updated: then keep the checkpoints on disk
        if not stopped or updates_in_step == 0:
            save_checkpoint(run_dir.sub(f"checkpoints/step-{last_step}"), last_step, accelerator.unwrap_model(policy),
                            accelerator.unwrap_model(value_model), tokenizer, opt_p, opt_v, sched_p, sched_v, kl_ctl,
                            cursor, {"sample": gen_sample, "shuffle": gen_shuffle, "prompts": gen_prompts}, ptx)
            save_model(accelerator.unwrap_model(policy), tokenizer, run_dir.sub("model"))
        write_jsonl(run_dir.sub("samples.jsonl"), samples_table)
        run_dir.plot_metrics({"reward": ["rm_score", "gold"], "kl": ["kl", "kl_k3"], "beta": ["beta"],
                              "losses": ["pg_loss", "vf_loss"], "ppo": ["clipfrac", "approx_kl"],
                              "entropy": ["entropy"], "explained_variance": ["explained_variance"],
                              "response_length": ["response_length"], "throughput": ["episodes_per_s"],
                              "held-out proxy vs gold": ["eval_proxy", "eval_gold"], "held-out KL": ["eval_kl"]})
        result = {"steps": last_step, "episodes": episodes, "seconds": time.time() - t0,
                  "episodes_per_s": episodes / max(1e-9, time.time() - t0), "final_beta": kl_ctl.beta}
        if episodes:
            result.update({k: row[k] for k in ("rm_score", "gold", "kl", "entropy", "response_length")})
        if stopped:
            kept = sorted(run_dir.sub("checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
            result["stopped"] = stopped
            result["last_good_checkpoint"] = f"checkpoints/{kept[-1].name}" if kept else "none (stopped before the first save)"
        run_dir.write_summary("PPO", {"result": result, "samples (last)": samples_table[-6:]})
    if stopped:
        raise RLHFError(stopped + f" (run directory: {cfg.out})")
    return Path(cfg.out)


def _resume(path, policy, value_model, opt_p, opt_v, sched_p, sched_v, kl_ctl, cursor, generators, ptx, accelerator) -> int:
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "state.json").is_file():
        raise RLHFError(f"resume: {path} is not a PPO checkpoint (no state.json)")
    state = json.loads((path / "state.json").read_text())
    for model, sub in ((policy, "policy"), (value_model, "value")):
        model = accelerator.unwrap_model(model)
        weights = load_file(str(path / sub / "model.safetensors"))
        if isinstance(model, ValueHead):
            if set(weights) != {"weight", "bias"}:
                raise RLHFError(f"resume: {path / sub} is not a policy value head (value_init differs?)")
            model.load_state_dict(weights)
            continue
        if model.config.tie_word_embeddings:  # tied output weights are saved once
            weights = {k: v for k, v in weights.items() if k != "lm_head.weight"}
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
        if missing or unexpected:
            raise RLHFError(f"resume: {path / sub} does not match this run's {sub} model (value_init differs?) "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    blob = torch.load(path / "trainer_state.pt", weights_only=False)
    opt_p.load_state_dict(blob["opt_policy"])
    opt_v.load_state_dict(blob["opt_value"])
    sched_p.load_state_dict(blob["sched_policy"])
    sched_v.load_state_dict(blob["sched_value"])
    random.setstate(blob["python_rng"])
    np.random.set_state(blob["numpy_rng"])
    torch.set_rng_state(blob["torch_rng"])
    for k, g in generators.items():
        g.set_state(blob["generators"][k])
    if ptx is not None and blob["ptx_generator"] is not None:
        ptx.generator.set_state(blob["ptx_generator"])
    kl_ctl.beta = state["beta"]
    cursor.update(order=state["order"], position=state["position"], epoch=state["epoch"])
    return int(state["step"])
