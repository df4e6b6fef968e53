"""Weight averaging of two checkpoints of one model: theta = (1 - w) * fine-tuned + w * base.

WiSE-FT (Wortsman et al. 2022) interpolates a fine-tuned model with the one it started from; Lin et al.
(2024, "Mitigating the Alignment Tax of RLHF") found that averaging the RLHF policy with the pretrained
model keeps more of what pretraining taught for a given reward than the other remedies they tried. The
pipeline does it after PPO (`average`, the share chosen per run: eval/averaging.py); `rlhf models average`
does it for any two folders of the same architecture and vocabulary.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from rlhf.errors import RLHFError
from rlhf.models.lm import count_parameters, load_causal_lm, load_tokenizer, prepare_out_dir, write_model_folder


def check_weight(weight: float) -> None:
    if not 0.0 <= weight <= 1.0:
        raise RLHFError(f"weight: expected a number in [0, 1] (the base model's share), got {weight}")


def average_state(finetuned: dict[str, torch.Tensor], base: dict[str, torch.Tensor], weight: float,
                  names: tuple[str, str] = ("fine-tuned", "base")) -> dict[str, torch.Tensor]:
    """(1 - weight) * finetuned + weight * base, tensor by tensor; integer buffers are taken from finetuned."""
    check_weight(weight)
    missing = sorted(set(finetuned) ^ set(base))
    if missing:
        where = names[0] if missing[0] in finetuned else names[1]
        raise RLHFError(f"{where}: parameter '{missing[0]}' is not in the other model; "
                        "averaging needs one architecture")
    out = {}
    for key, a in finetuned.items():
        b = base[key]
        if a.shape != b.shape:
            raise RLHFError(f"parameter '{key}': shape {tuple(a.shape)} in {names[0]} but {tuple(b.shape)} in "
                            f"{names[1]}")
        out[key] = torch.lerp(a, b.to(a.dtype), weight) if a.is_floating_point() else a.clone()
    return out


def average_models(finetuned: str | Path, base: str | Path, weight: float, out_dir: str | Path,
                   force: bool = False) -> dict:
    """Write the average of two HF folders to OUT_DIR (the fine-tuned folder's config and tokenizer)."""
    finetuned, base, out_dir = Path(finetuned), Path(base), Path(out_dir)
    check_weight(weight)  # before two models are loaded
    t0 = time.perf_counter()
    tok, base_tok = load_tokenizer(finetuned), load_tokenizer(base)
    if tok.get_vocab() != base_tok.get_vocab():
        raise RLHFError(f"{base}: its tokenizer's vocabulary differs from {finetuned}'s; "
                        "averaging needs one vocabulary")
    model, base_model = load_causal_lm(finetuned), load_causal_lm(base)
    if type(model) is not type(base_model):
        raise RLHFError(f"{base}: a {type(base_model).__name__}, but {finetuned} is a {type(model).__name__}")
    prepare_out_dir(out_dir, force)
    state = average_state(model.state_dict(), base_model.state_dict(), weight, (str(finetuned), str(base)))
    model.load_state_dict(state)
    write_model_folder(model, tok, out_dir)
    return {"finetuned": str(finetuned), "base": str(base), "weight": weight, "out_dir": str(out_dir),
            "parameters": count_parameters(model), "seconds": round(time.perf_counter() - t0, 2)}
