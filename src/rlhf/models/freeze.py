"""Training part of a model: freeze the transformer blocks below the top k (and the embeddings)."""
from __future__ import annotations

import torch

from rlhf.errors import RLHFError


def transformer_blocks(model) -> torch.nn.ModuleList:
    """The list of transformer blocks of a backbone (Llama/Qwen `layers`, GPT-2 `h`, BERT `encoder.layer`)."""
    base = getattr(model, "module", model).base_model
    for path in ("layers", "h", "encoder.layer", "transformer.layer", "decoder.layers"):
        obj = base
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise RLHFError(f"train_layers: cannot find the transformer blocks of {type(base).__name__}")


def freeze_below(model, k: int, train_embeddings: bool = True) -> int:
    """Train only the top k blocks (k = 0: all of them) and everything after them (final norm, pooler,
    head); the embeddings train only when every block does and `train_embeddings` holds. Returns the
    number of trainable parameters."""
    if k or not train_embeddings:
        blocks = transformer_blocks(model)
        if k > len(blocks):
            raise RLHFError(f"train_layers: {k} > the model's {len(blocks)} blocks")
        k = k or len(blocks)
        keep = {id(p) for b in list(blocks)[len(blocks) - k:] for p in b.parameters()}
        below = {id(p) for b in list(blocks)[:len(blocks) - k] for p in b.parameters()}
        base = getattr(model, "module", model).base_model
        embeddings = {id(p) for n, p in base.named_parameters() if id(p) not in keep and id(p) not in below
                      and ("emb" in n or n.startswith("wte") or n.startswith("wpe"))}
        for p in model.parameters():
            p.requires_grad_(id(p) not in below and id(p) not in embeddings)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

