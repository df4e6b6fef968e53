"""Tiny causal LMs built from transformers configs at named sizes, and checkpoint loading.

Every checkpoint is a standard HF folder (config.json + model.safetensors + tokenizer), loadable by
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, PreTrainedModel

from rlhf.errors import RLHFError

# name -> (hidden, layers, heads, intermediate); about 1M, 5M and 20M parameters at a 2k vocabulary
SIZES = {
    "nano": (128, 4, 4, 512),
    "micro": (256, 6, 8, 768),
    "small": (448, 8, 8, 1536),
}


def model_config(size: str, vocab_size: int, eos_id: int, pad_id: int, arch: str = "llama", max_len: int = 256):
    if size not in SIZES:
        raise RLHFError(f"unknown model size '{size}'; choose one of: {', '.join(SIZES)}")
    hidden, layers, heads, inter = SIZES[size]
    common = dict(vocab_size=vocab_size, eos_token_id=eos_id, bos_token_id=eos_id, pad_token_id=pad_id,
                  tie_word_embeddings=True)
    if arch == "llama":
        return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=heads, intermediate_size=inter, max_position_embeddings=max_len,
                           rms_norm_eps=1e-5, attention_dropout=0.0, **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_inner=inter, n_positions=max_len,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    raise RLHFError(f"unknown architecture '{arch}'; choose llama or gpt2")


def create_model(size: str, tokenizer, arch: str = "llama", max_len: int = 256, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    cfg = model_config(size, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, arch, max_len)
    return AutoModelForCausalLM.from_config(cfg)


def check_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise RLHFError(f"checkpoint not found: {path}")
    if not (path / "config.json").is_file():
        raise RLHFError(f"not a Hugging Face model folder (no config.json): {path}")
    return path


def load_tokenizer(path: str | Path):
    path = check_checkpoint(path)
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token is None:
        raise RLHFError(f"{path}: tokenizer has no pad token")
    return tok


def load_causal_lm(path: str | Path) -> PreTrainedModel:
    path = check_checkpoint(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise RLHFError(f"cannot load model from {path}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return model


def save_model(model, tokenizer, directory: str | Path) -> None:
    """Standard HF folder with safetensors weights and the tokenizer beside them."""
    model = getattr(model, "module", model)
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- forward passes every model shares


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding: left- and right-padded batches see the same positions."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """(B,) column of each row's last attended (mask = 1) entry."""
    return (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(1)


def backbone(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor | None = None):
    """The transformer's last hidden states (no LM or score head), positions from the mask unless given."""
    positions = position_ids(attention_mask) if positions is None else positions
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                         with_entropy: bool = False):
    """log p(token) under softmax(logits / temperature), and optionally the entropy (without gradient:
    it is a statistic, not part of the loss)."""
    logits = logits.float()
    if temperature > 0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
    if not with_entropy:
        return logp
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
