"""Tiny causal LMs built from transformers configs at named sizes, and checkpoint loading.

Every checkpoint is a standard HF folder (config.json + model.safetensors + tokenizer), loadable by
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`.
"""
from __future__ import annotations

import json
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


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def check_weights(path: str | Path) -> Path:
    """A model folder that holds weights (safetensors or PyTorch .bin, single or sharded)."""
    path = check_checkpoint(path)
    if not any(any(path.glob(p)) for p in WEIGHT_PATTERNS):
        raise RLHFError(f"{path}: no model weights (config.json but no *.safetensors or *.bin file)")
    return path


def config_vocab_size(path: str | Path) -> int | None:
    """`vocab_size` from a folder's config.json (or its text_config), without loading the model."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise RLHFError(f"{Path(path) / 'config.json'}: cannot read: {exc}") from None
    size = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
    return int(size) if size else None


def check_vocab(tokenizer, rows: int | None, where: str) -> None:
    """Every token id the tokenizer can produce must have an embedding row."""
    if rows is not None and len(tokenizer) > rows:
        raise RLHFError(f"{where}: the tokenizer has {len(tokenizer)} tokens but the model has {rows} embedding rows "
                        "(vocab_size); tokenizer and model do not match")


def load_tokenizer(path: str | Path):
    """The folder's tokenizer. A tokenizer without a pad token gets pad = EOS (no new vocabulary entry:
    padding is always told apart by attention masks, never by the pad id); one without EOS (or an encoder's
    [SEP]) is an error."""
    path = check_checkpoint(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError, TypeError) as exc:
        raise RLHFError(f"cannot load tokenizer from {path}: {str(exc).splitlines()[0]}") from None
    if tok.eos_token is None and tok.sep_token is None:  # an encoder's ([CLS] ... [SEP]) needs no EOS
        raise RLHFError(f"{path}: tokenizer has no EOS token (set eos_token in tokenizer_config.json)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.sep_token
    check_vocab(tok, config_vocab_size(path), str(path))
    return tok


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise RLHFError(f"unknown dtype '{dtype}'; choose one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_causal_lm(path: str | Path, dtype: str = "fp32") -> PreTrainedModel:
    """A local HF causal LM in `dtype` (fp32 or bf16), in eval mode."""
    torch_type = torch_dtype(dtype)
    path = check_weights(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_type)
    except (OSError, ValueError, KeyError) as exc:
        raise RLHFError(f"cannot load model from {path}: {str(exc).splitlines()[0]}") from None
    model.eval()
    return fused_gelu(model)


class TanhGELU(torch.nn.Module):
    """GELU's tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), in PyTorch's one fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x, approximate="tanh")


def fused_gelu(model):
    """GPT-2-family models ("gelu_new", "gelu_fast") compute the tanh-approximated GELU in about eight
    element-wise operations, each a pass over the MLP's activations (and as many in backward); PyTorch's
    gelu(approximate="tanh") is the same function in one kernel (HF's "gelu_pytorch_tanh"; the outputs
    agree to float rounding, 2.4e-7 on values up to 16). Swaps those modules in place; the config, so the
    saved folder, is unchanged. Other activations are left as they are."""
    from transformers.activations import FastGELUActivation, NewGELUActivation

    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) in (NewGELUActivation, FastGELUActivation):
                setattr(module, name, TanhGELU())
    return model


def folder_info(path: str | Path) -> dict:
    """What `rlhf models info` shows: architecture, parameters (counted on the meta device: nothing is
    loaded), weights dtype, vocabulary, chat template, EOS and pad."""
    import transformers
    from transformers import AutoConfig

    from rlhf.data.chat import uses_model_template

    path = check_weights(path)
    cfg = AutoConfig.from_pretrained(str(path))
    arch = (getattr(cfg, "architectures", None) or ["?"])[0]
    cls = getattr(transformers, arch, None)
    with torch.device("meta"):
        model = cls(cfg) if cls is not None else AutoModelForCausalLM.from_config(cfg)
    tok = load_tokenizer(path)
    template = ("the model's own (apply_chat_template)" if uses_model_template(tok) else
                "built-in Human/Assistant" + ("" if tok.chat_template else " (the tokenizer has none)"))
    pad = f"{tok.pad_token!r} (id {tok.pad_token_id})" + (" = EOS" if tok.pad_token_id == tok.eos_token_id else "")
    return {
        "folder": str(path), "architecture": arch, "parameters": f"{count_parameters(model) / 1e6:.1f}M",
        "dtype": str(getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or "?").replace("torch.", ""),
        "vocab": f"{len(tok)} tokens, {config_vocab_size(path)} embedding rows",
        "chat template": template, "eos": f"{tok.eos_token!r} (id {tok.eos_token_id})", "pad": pad,
        "max positions": getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", "?"),
    }


def save_model(model, tokenizer, directory: str | Path) -> None:
    """Standard HF folder with safetensors weights and the tokenizer beside them."""
    model = getattr(model, "module", model)
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))


def prepare_out_dir(out_dir: Path, force: bool) -> None:
    """OUT_DIR may not exist, or be an empty folder, or (with force) a folder to replace."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise RLHFError(f"output exists and is not a folder: {out_dir}")
        if any(out_dir.iterdir()) and not force:
            raise RLHFError(f"output folder is not empty: {out_dir} (pass --force to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def write_model_folder(model, tokenizer, out_dir: str | Path) -> None:
    """save_model into a temporary folder beside OUT_DIR, renamed at the end: nothing is ever half-written."""
    import os
    import shutil
    import tempfile

    out_dir = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        save_model(model, tokenizer, tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                            position_ids=positions).last_hidden_state


def temper(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature as sampling uses them; the same tensor, not a copy, where that changes nothing
    (temperature 1, or 0 = greedy)."""
    return logits / temperature if temperature > 0 and temperature != 1 else logits


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                         with_entropy: bool = False):
    """log p(token) under softmax(logits / temperature), and optionally the entropy (without gradient:
    it is a statistic, not part of the loss)."""
    logp_all = torch.log_softmax(temper(logits.float(), temperature), -1)
    logp = logp_all.gather(-1, tokens[..., None]).squeeze(-1)
    if not with_entropy:
        return logp
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
