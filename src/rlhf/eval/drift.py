"""Where a policy stands against its reference: proxy (RM) score, gold reward and KL on held-out prompts."""
from __future__ import annotations

import torch

from rlhf.data.chat import decode_response, encode_prompt
from rlhf.models.reward import score as rm_score
from rlhf.rollout.engine import SamplingConfig, response_logprobs, sample
from rlhf.world import World


@torch.no_grad()
def proxy_gold_kl(policy, ref, reward_model, tokenizer, world: World, prompts: list[dict],
                  sampling: SamplingConfig, seed: int = 0, batch_size: int = 64) -> dict:
    """Sample from the policy (T as in training); KL is the mean over prompts of
    sum_t log pi(y_t) - log pi_ref(y_t) for the sampled y: an unbiased estimate of KL(pi || pi_ref)."""
    generator = torch.Generator().manual_seed(seed)
    rm_total, gold_total, kl_total, n = 0.0, 0.0, 0.0, 0
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        roll = sample(policy, [encode_prompt(tokenizer, p["prompt"]) for p in chunk], sampling,
                      tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
        ids, attn, P = roll.input_ids, roll.attention_mask, roll.prompt_ids.shape[1]
        mask = roll.response_mask.float()
        logp = response_logprobs(policy, ids, attn, P, sampling.temperature) * mask
        ref_logp = response_logprobs(ref, ids, attn, P, sampling.temperature) * mask
        kl_total += (logp - ref_logp).sum().item()
        rm_total += rm_score(reward_model, ids, attn).sum().item()
        for p, r in zip(chunk, roll.response_ids):
            gold_total += world.score(p["prompt"], decode_response(tokenizer, r.tolist())).total
        n += len(chunk)
    return {"proxy": rm_total / n, "gold": gold_total / n, "kl": max(0.0, kl_total / n)}
