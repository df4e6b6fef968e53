"""Where a policy stands against its reference: proxy (RM) score, gold reward and KL on held-out prompts,
through the same sample -> log-probs -> reward path as PPO's iterations (`rollout.experience`)."""
from __future__ import annotations

import torch

from rlhf.data.chat import encode_prompt
from rlhf.rollout.engine import SamplingConfig
from rlhf.rollout.experience import Models, rollout
from rlhf.world import World


@torch.no_grad()
def proxy_gold_kl(models: Models, world: World, prompts: list[dict], sampling: SamplingConfig, seed: int = 0,
                  batch_size: int = 64) -> dict:
    """Sample from the policy (T as in training); KL is the mean over prompts of
    sum_t log pi(y_t) - log pi_ref(y_t) for the sampled y: an unbiased estimate of KL(pi || pi_ref)."""
    generator = torch.Generator().manual_seed(seed)
    rm_total, gold_total, kl_total, n = 0.0, 0.0, 0.0, 0
    for i in range(0, len(prompts), batch_size):
        chunk = [p["prompt"] for p in prompts[i:i + batch_size]]
        exp = rollout(models, chunk, [encode_prompt(models.tokenizer, p) for p in chunk], sampling, generator)
        kl_total += (exp.logp - exp.ref_logp).sum().item()
        rm_total += exp.scores.sum().item()
        gold_total += sum(world.score(p, r).total for p, r in zip(chunk, exp.texts))
        n += len(chunk)
    return {"proxy": rm_total / n, "gold": gold_total / n, "kl": max(0.0, kl_total / n)}
