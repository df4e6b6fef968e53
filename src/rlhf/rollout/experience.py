"""One batch of experience for RL from a policy: sample responses, then score them: log-probs under the
policy and the frozen reference, the value model's V(s_t), the reward model's score. PPO's iterations
and its held-out evaluation (`eval/drift.py`) take the same path; so will other on-policy methods.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from rlhf.data.chat import decode_response
from rlhf.models.reward import reward_scores, score_texts
from rlhf.models.value import ValueHead, logprobs_and_values, token_values
from rlhf.rollout.engine import Rollout, Rows, SamplingConfig, response_logprobs, sample


@dataclass
class Models:
    """The models of an RL run: the policy, its frozen reference, the reward model, the value model."""
    policy: torch.nn.Module
    ref: torch.nn.Module
    reward: torch.nn.Module
    value: torch.nn.Module | None  # None: log-probs only (evaluation)
    tokenizer: object
    rm_tokenizer: object | None = None  # set when the RM reads another vocabulary: responses are re-encoded
    ensemble: list = field(default_factory=list)  # more reward models (same vocabulary as `reward`), scored beside it


@dataclass
class Experience:
    """One scored rollout batch: per-token tensors are (B, T) over response tokens, 0 where masked."""
    roll: Rollout
    prompts: list
    texts: list[str]
    mask: torch.Tensor  # (B, T) response tokens
    logp: torch.Tensor
    ref_logp: torch.Tensor
    values: torch.Tensor | None
    scores: torch.Tensor  # the reward model's (normalized) score
    gen_seconds: float
    member_scores: torch.Tensor | None = None  # (K, B): the reward model's and each ensemble member's scores
    score_seconds: float = 0.0  # wall time of the log-prob, value and reward-model passes after sampling


def policy_forward(m: Models, ids, attn, P: int, temperature: float, with_entropy: bool = False):
    """Response log-probs (and entropies) under the policy, and V(s_t) (None without a value model). The models
    are called unwrapped (their parts, such as the backbone, are not reachable through DistributedDataParallel):
    a trainer on many processes averages the gradients itself (`parallel.average_gradients`)."""
    policy, value = getattr(m.policy, "module", m.policy), getattr(m.value, "module", m.value)
    if isinstance(value, ValueHead):
        return logprobs_and_values(policy, value, ids, attn, P, temperature, with_entropy)
    out = response_logprobs(policy, ids, attn, P, temperature, with_entropy)
    values = token_values(value, ids, attn, P) if value is not None else None
    return (*out, values) if with_entropy else (out, values)


@torch.no_grad()
def rollout(m: Models, prompts: list, encoded: list[list[int]], sampling: SamplingConfig,
            generator: torch.Generator, rows: Rows | None = None) -> Experience:
    """Sample responses; score them: log-probs under policy and reference, values, the RM's score. `rows`: the
    prompts are this process's slice of a global batch (`engine.Rows`)."""
    t0 = time.time()
    roll = sample(m.policy, encoded, sampling, m.tokenizer.eos_token_id, m.tokenizer.pad_token_id, generator, rows=rows)
    gen_seconds = time.time() - t0
    texts = [decode_response(m.tokenizer, r.tolist()) for r in roll.response_ids]
    ids, attn, P, mask = roll.input_ids, roll.attention_mask, roll.prompt_ids.shape[1], roll.response_mask.float()
    logp, values = policy_forward(m, ids, attn, P, sampling.temperature)
    ref_logp = response_logprobs(m.ref, ids, attn, P, sampling.temperature) * mask
    scores = score_responses(m, ids, attn, prompts, texts)
    members = (torch.stack([scores] + [score_responses(replace(m, reward=r), ids, attn, prompts,
                                                       texts) for r in m.ensemble])
               if m.ensemble else None)
    return Experience(roll, prompts, texts, mask, logp * mask, ref_logp, values * mask if values is not None else None,
                      scores, gen_seconds, members, time.time() - t0 - gen_seconds)


def score_responses(m: Models, ids, attn, prompts: list, texts: list[str]) -> torch.Tensor:
    """(B,) the reward model's normalized score of each sampled response: on the rollout's own tokens, or
    on the re-encoded text when the RM reads another vocabulary."""
    if m.rm_tokenizer is not None:
        return torch.tensor(score_texts(m.reward, m.rm_tokenizer, prompts, texts), device=ids.device)
    return reward_scores(m.reward, ids, attn)
