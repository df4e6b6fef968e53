"""Reward model: a transformer backbone plus a scalar head, read at the last non-padding token.

Saved as a standard HF sequence-classification folder (num_labels = 1). Position ids are computed from
the attention mask, so left- and right-padded batches give the same scores. The normalization offset
found after training is stored in config.json as `rlhf_reward_offset`.

The one way to score responses with a reward model is here: `reward_scores` on token tensors (PPO's
rollouts) and `score_texts` on (prompt, response) text (the reward trainer, best-of-N, evaluation,
labels): batched, sorted by length, on the model's device, cut at the model's own `max_len`, normalized
or raw by argument.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from rlhf.data.batching import left_pad
from rlhf.data.chat import encode_prompt_response
from rlhf.errors import RLHFError
from rlhf.models.lm import backbone, check_checkpoint, last_token_index


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
    head = score_head(model)
    d = head.weight.shape[1]
    torch.nn.init.normal_(head.weight, std=1 / math.sqrt(d + 1))
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    model.config.rlhf_reward_offset = 0.0
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


def score_head(model) -> torch.nn.Linear:
    """The scalar head of a sequence-classification model (`score` on Llama, `classifier` elsewhere; under
    LoRA, peft's trainable copy of it, `modules_to_save`)."""
    model = getattr(model, "module", model)
    for name in ("score", "classifier"):
        head = getattr(model, name, None)
        if isinstance(head, torch.nn.Linear) or isinstance(getattr(head, "original_module", None), torch.nn.Linear):
            return head
    raise RLHFError(f"{type(model).__name__}: no linear score head found")


def max_len(model) -> int:
    """The longest sequence the model was built for (its position table)."""
    cfg = getattr(model, "module", model).config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions"))


def raw_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) head output at each row's last attended token."""
    hidden = backbone(model, input_ids, attention_mask)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
    return score_head(model)(pooled).squeeze(-1).float()


def reward_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """(B,) rewards of token sequences; normalized: minus the offset stored at training time (times a
    `rlhf_reward_gain` where a checkpoint stores one; the reward trainer does not)."""
    raw = raw_scores(model, input_ids, attention_mask)
    return normalized(model, raw) if normalize else raw


def normalized(model, raw: torch.Tensor) -> torch.Tensor:
    """Raw head outputs -> rewards: minus the offset stored at training time, times the stored gain."""
    cfg = getattr(model, "module", model).config
    return getattr(cfg, "rlhf_reward_gain", 1.0) * (raw - getattr(cfg, "rlhf_reward_offset", 0.0))


def score(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Normalized reward of token sequences (`reward_scores(..., normalize=True)`)."""
    return reward_scores(model, input_ids, attention_mask, normalize=True)


@torch.no_grad()
def score_sequences(model, seqs: list[list[int]], pad_id: int, normalize: bool = True,
                    batch_size: int = 64) -> list[float]:
    """Scores of already-encoded sequences, in order: sorted by length into batches (less padding),
    left-padded, on the model's device."""
    device = next(model.parameters()).device
    values = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))  # similar lengths together: less padding
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        ids, mask = left_pad([seqs[j] for j in idx], pad_id)
        for j, v in zip(idx, reward_scores(model, ids.to(device), mask.to(device), normalize).tolist()):
            values[j] = v
    return values


def score_texts(model, tokenizer, prompts: list, responses: list[str], normalize: bool = True,
                batch_size: int = 64) -> list[float]:
    """Rewards of (prompt, response) pairs (prompts as strings or messages), each cut to the model's max_len."""
    n = max_len(model)
    seqs = [encode_prompt_response(tokenizer, p, r, n) for p, r in zip(prompts, responses)]
    return score_sequences(model, seqs, tokenizer.pad_token_id, normalize, batch_size)
