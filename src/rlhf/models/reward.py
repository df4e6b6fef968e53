"""Reward model: a transformer backbone plus a scalar head, read at the last non-padding token.

Saved as a standard HF sequence-classification folder (num_labels = 1). Position ids are computed from
the attention mask, so left- and right-padded batches give the same scores. The normalization offset
(and gain) found after training are stored in config.json as `rlhf_reward_offset` / `rlhf_reward_gain`
and applied by `score`.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from rlhf.errors import RLHFError
from rlhf.models.lm import check_checkpoint
from rlhf.rollout.engine import position_ids


def init_reward_model(path: str | Path, seed: int = 0):
    """A reward model whose backbone comes from any local HF causal LM (the SFT model by default)."""
    path = check_checkpoint(path)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(str(path))
    config.num_labels = 1
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), config=config, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise RLHFError(f"cannot build a reward model from {path}: {str(exc).splitlines()[0]}") from None
    head = _head(model)
    d = head.weight.shape[1]
    torch.nn.init.normal_(head.weight, std=1 / math.sqrt(d + 1))
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    model.config.rlhf_reward_offset = 0.0
    model.config.rlhf_reward_gain = 1.0
    return model


def load_reward_model(path: str | Path):
    path = check_checkpoint(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise RLHFError(f"cannot load reward model from {path}: {str(exc).splitlines()[0]}") from None
    if model.config.num_labels != 1:
        raise RLHFError(f"{path}: a reward model has num_labels = 1, this one has {model.config.num_labels}")
    model.eval()
    return model


def _head(model) -> torch.nn.Linear:
    for name in ("score", "classifier"):
        if isinstance(getattr(model, name, None), torch.nn.Linear):
            return getattr(model, name)
    raise RLHFError(f"{type(model).__name__}: no linear score head found")


def raw_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) head output at each row's last attended token."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids(attention_mask)).last_hidden_state
    last = (attention_mask * torch.arange(attention_mask.shape[1], device=attention_mask.device)).argmax(1)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return _head(model)(pooled).squeeze(-1)


def score(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Normalized reward: gain * (raw - offset)."""
    cfg = model.config
    return getattr(cfg, "rlhf_reward_gain", 1.0) * (raw_scores(model, input_ids, attention_mask)
                                                     - getattr(cfg, "rlhf_reward_offset", 0.0))
