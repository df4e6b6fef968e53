"""Value models for actor-critic RL: V(s_t) for every response token.

Three kinds: `reward` (a copy of the reward model, its head zeroed), `sft` (a fresh scalar head on the
policy's initial backbone) and `policy` (a zero-initialized head on the policy itself, so one backbone
pass gives both log-probs and values).
"""
from __future__ import annotations

from pathlib import Path

import torch

from rlhf.errors import RLHFError
from rlhf.models.lm import backbone, logprobs_from_logits
from rlhf.models.reward import init_reward_model, load_reward_model, score_head

VALUE_INITS = ("reward", "sft", "policy")


class ValueHead(torch.nn.Linear):
    """value_init=policy: a scalar head on the policy's last hidden state, zero at the start."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size, 1)
        torch.nn.init.zeros_(self.weight)
        torch.nn.init.zeros_(self.bias)


def load_value_model(kind: str, reward_model: str | Path, policy_path: str | Path, policy, seed: int = 0):
    """A value model of `kind` (see VALUE_INITS) whose output starts at zero."""
    if kind not in VALUE_INITS:
        raise RLHFError(f"value_init: expected 'reward', 'sft' or 'policy', got '{kind}'")
    if kind == "policy":
        return ValueHead(policy.config.hidden_size)
    model = load_reward_model(reward_model) if kind == "reward" else init_reward_model(policy_path, seed)
    head = score_head(model)
    torch.nn.init.zeros_(head.weight)
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    return model


def token_values(value_model, input_ids, attention_mask, response_start: int) -> torch.Tensor:
    """V(s_t) for every response position: the head on the hidden state that predicts token t."""
    hidden = backbone(value_model, input_ids, attention_mask)
    return score_head(value_model)(hidden[:, response_start - 1:-1]).squeeze(-1).float()


def logprobs_and_values(policy, head: ValueHead, input_ids, attention_mask, response_start: int,
                        temperature: float, with_entropy: bool = False):
    """One backbone pass: the response's log-probs (and entropies) and V(s_t) from the shared head."""
    hidden = backbone(policy, input_ids, attention_mask)[:, response_start - 1:-1]
    out = logprobs_from_logits(policy.get_output_embeddings()(hidden), input_ids[:, response_start:], temperature,
                               with_entropy)
    values = head(hidden.to(head.weight.dtype)).squeeze(-1).float()  # the head stays fp32 under a bf16 policy
    return (*out, values) if with_entropy else (out, values)
