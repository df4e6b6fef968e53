"""Reward model: a transformer backbone plus a scalar head on a pooled hidden state.

Saved as a standard HF sequence-classification folder (num_labels = 1). Decoders (any causal LM) are read
at the last non-padding token. Encoders (BERT-like: all-MiniLM-L6-v2, ...) see the prompt and response as
one plain text, "[CLS] Human: ...\n\nAssistant: ... [SEP]", pooled the way the encoder was trained: mean
over tokens when its sentence-transformers folder says so (1_Pooling/config.json), else its own pooler on
[CLS]. The pooling is stored in config.json as `rlhf_reward_pooling` (last | mean | cls). Position ids
are computed from the attention mask, so left- and right-padded batches give the same scores for both
kinds. The normalization offset found after training is stored in config.json as `rlhf_reward_offset`.

The one way to score responses with a reward model is here: `reward_scores` on token tensors (PPO's
rollouts) and `score_texts` on (prompt, response) text (the reward trainer, best-of-N, evaluation,
labels): batched, sorted by length, on the model's device, cut at the model's own `max_len`, normalized
or raw by argument.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from rlhf.data.batching import left_pad
from rlhf.data.chat import encode_prompt_response
from rlhf.errors import RLHFError
from rlhf.models.lm import backbone, check_checkpoint, fused_gelu, last_token_index

POOLINGS = ("last", "mean", "cls")


def is_encoder_config(config) -> bool:
    """A bidirectional encoder (a masked-LM architecture used as such), not a causal LM."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)


def default_pooling(path: Path, config) -> str:
    """last for decoders; for encoders the sentence-transformers pooling of the folder, else [CLS]."""
    if not is_encoder_config(config):
        return "last"
    st = path / "1_Pooling" / "config.json"
    if st.is_file() and json.loads(st.read_text()).get("pooling_mode_mean_tokens"):
        return "mean"
    return "cls"


def pooling(model) -> str:
    return getattr(getattr(model, "module", model).config, "rlhf_reward_pooling", "last")


def is_encoder(model) -> bool:
    return pooling(model) != "last"


def init_reward_model(path: str | Path, seed: int = 0, pool: str = "auto"):
    """A reward model whose backbone comes from any local HF causal LM (the SFT model by default) or
    encoder; pool: auto (last token for decoders, the encoder's own pooling) | last | mean | cls."""
    path = check_checkpoint(path)
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(str(path))
    config.num_labels = 1
    chosen = default_pooling(path, config) if pool == "auto" else pool
    if chosen not in POOLINGS:
        raise RLHFError(f"pooling: expected auto, {', '.join(POOLINGS)}; got '{pool}'")
    if (chosen == "last") == is_encoder_config(config):
        kind = "an encoder" if is_encoder_config(config) else "a causal LM"
        raise RLHFError(f"pooling={chosen} does not suit {path} ({kind}: {config.model_type}); use pooling=auto")
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
    model.config.rlhf_reward_pooling = chosen
    return fused_gelu(model)


def load_reward_model(path: str | Path):
    path = check_checkpoint(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise RLHFError(f"cannot load reward model from {path}: {str(exc).splitlines()[0]}") from None
    if model.config.num_labels != 1:
        raise RLHFError(f"{path}: a reward model has num_labels = 1, this one has {model.config.num_labels}")
    model.eval()
    return fused_gelu(model)


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


def pool_hidden(model, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, d) from (B, T, d) by the model's pooling; padding on either side is skipped."""
    kind, rows = pooling(model), torch.arange(hidden.shape[0], device=hidden.device)
    if kind == "last":
        return hidden[rows, last_token_index(attention_mask)]
    if kind == "mean":
        m = attention_mask[..., None].to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    first = hidden[rows, attention_mask.argmax(1)]  # [CLS]: the first attended token
    pooler = getattr(getattr(model, "module", model).base_model, "pooler", None)
    return pooler(first[:, None]) if pooler is not None else first


def raw_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) head output on each row's pooled hidden state (the last attended token for decoders)."""
    hidden = backbone(model, input_ids, attention_mask)
    return score_head(model)(pool_hidden(model, hidden, attention_mask)).squeeze(-1).float()


def plain_prompt(messages) -> str:
    """A conversation as HH-style plain text ending with "Assistant:" (how encoders read it)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    names = {"user": "Human: ", "assistant": "Assistant: ", "system": ""}
    return "\n\n".join(names[m["role"]] + m["content"] for m in messages) + "\n\nAssistant:"


def encode_plain(tokenizer, prompt, response: str, max_len: int) -> list[int]:
    """[CLS] prompt ' response' [SEP] for an encoder, the prompt cut from the left to fit max_len."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None or end is None:
        raise RLHFError(f"{type(tokenizer).__name__}: an encoder reward model needs [CLS]/[SEP] (or BOS/EOS) tokens")
    budget = max_len - 2
    p = tokenizer.encode(plain_prompt(prompt), add_special_tokens=False)
    r = tokenizer.encode(" " + response, add_special_tokens=False)[:budget]
    return [start] + p[max(0, len(p) - (budget - len(r))):] + r + [end]


def encode_for(model, tokenizer, prompt, response: str, max_len: int) -> list[int]:
    """The token sequence this reward model scores for (prompt, response)."""
    if is_encoder(model):
        return encode_plain(tokenizer, prompt, response, max_len)
    return encode_prompt_response(tokenizer, prompt, response, max_len)


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
    seqs = [encode_for(model, tokenizer, p, r, n) for p, r in zip(prompts, responses)]
    return score_sequences(model, seqs, tokenizer.pad_token_id, normalize, batch_size)
