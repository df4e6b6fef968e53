"""Held-out checks the policy-optimization trainers share (DPO, GRPO/RLOO, ...): sample from the policy on
held-out prompts with the one rollout engine and report the KL to the frozen reference and, when the
caller passes a gold scorer (the pipeline passes the world's), the mean gold reward of those samples."""
from __future__ import annotations

from typing import Callable

import torch

from rlhf.data.chat import decode_response, encode_prompt
from rlhf.rollout.engine import SamplingConfig, response_logprobs, sample

GoldFn = Callable[[object, str], float]  # (prompt: str | messages, response text) -> gold reward


@torch.no_grad()
def sample_kl(policy, ref, tokenizer, prompts: list, sampling: SamplingConfig, seed: int = 0,
              gold: GoldFn | None = None, batch_size: int = 64) -> dict:
    """KL(pi || pi_ref) on `prompts`: the mean over prompts of sum_t log pi(y_t) - log pi_ref(y_t) for y
    sampled from pi (an unbiased estimate), both at the sampling temperature; plus mean response length,
    EOS rate and, with `gold`, the mean gold reward."""
    was_training = policy.training
    policy.eval()
    generator = torch.Generator().manual_seed(seed)
    kl, length, eos, golds, n = 0.0, 0.0, 0.0, [], 0
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        roll = sample(policy, [encode_prompt(tokenizer, p) for p in chunk], sampling, tokenizer.eos_token_id,
                      tokenizer.pad_token_id, generator)
        ids, attn, P = roll.input_ids, roll.attention_mask, roll.prompt_ids.shape[1]
        mask = roll.response_mask.float()
        logp = response_logprobs(policy, ids, attn, P, sampling.temperature) * mask
        ref_logp = response_logprobs(ref, ids, attn, P, sampling.temperature) * mask
        kl += (logp - ref_logp).sum().item()
        length += mask.sum().item()
        eos += roll.finished.float().sum().item()
        if gold is not None:
            golds += [gold(p, decode_response(tokenizer, r.tolist())) for p, r in zip(chunk, roll.response_ids)]
        n += len(chunk)
    policy.train(was_training)
    out = {"kl": kl / n, "response_length": length / n, "eos_rate": eos / n}
    if gold is not None:
        out["gold"] = sum(golds) / len(golds)
    return out
