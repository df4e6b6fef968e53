"""Several responses to one prompt in a single forward pass ("packed" rows): their log-probs (DPO, RRHF,
GRPO/RLOO) or their reward-model scores (the reward trainer, GRPO/RLOO's group scoring).

A row holds a prompt once and its responses laid out after it; a block attention mask lets each response
see the prompt and itself only, at the positions it would have alone, so every response's log-probs (or
score) equal those of the separate sequence prompt + response (up to float rounding), while the prompt is
computed once instead of K times. The LM head runs only on the positions that predict response tokens; the
score head only on each response's last token.

A row is `(prompt tokens, [response tokens, ...], [index of each response in the output])`: `pack` makes
it for log-probs, `rlhf.train.reward.pack_ranking` for the reward model.
"""
from __future__ import annotations

import torch

from rlhf.models.lm import backbone, logprobs_from_logits
from rlhf.models.reward import score_head

PackedRow = tuple[list[int], list[list[int]], list[int]]


def pack(prompt: list[int], responses: list[list[int]], max_len: int, start: int = 0) -> list[PackedRow]:
    """Rows for one prompt and its responses, each prompt + response at most `max_len` tokens: a response
    keeps at most max_len - 1 tokens (one prompt token must predict its first), the prompt is cut from the
    left to fit, and responses whose prompt is cut at the same place share a row (all of them unless
    max_len bites)."""
    if not prompt:
        raise ValueError("empty prompt")
    groups: dict[int, PackedRow] = {}
    for k, toks in enumerate(responses):
        toks = toks[:max_len - 1]
        cut = max(0, len(prompt) - (max_len - len(toks)))
        row = groups.setdefault(cut, (prompt[cut:], [], []))
        row[1].append(toks)
        row[2].append(start + k)
    return list(groups.values())


def layout(rows: list[PackedRow], pad_id: int, align: str = "left"):
    """(ids, seg, pos, spans) of `rows` as one (B, W) batch: token ids, segment ids (0 prompt, j + 1
    response j, -1 padding), positions (each response continues its prompt's), and per response
    (row, first column, its tokens, its output index). align "right" puts the padding first (the reward scores
    have always been computed that way; the result is the same up to float rounding)."""
    width = max(len(p) + sum(len(x) for x in rs) for p, rs, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    spans = []
    for b, (p, rs, where) in enumerate(rows):
        col = width - len(p) - sum(len(x) for x in rs) if align == "right" else 0
        ids[b, col:col + len(p)] = torch.tensor(p, dtype=torch.long)
        seg[b, col:col + len(p)] = 0
        pos[b, col:col + len(p)] = torch.arange(len(p))
        col += len(p)
        for j, (x, w) in enumerate(zip(rs, where)):
            ids[b, col:col + len(x)] = torch.tensor(x, dtype=torch.long)
            seg[b, col:col + len(x)] = j + 1
            pos[b, col:col + len(x)] = torch.arange(len(p), len(p) + len(x))
            spans.append((b, col, x, w))
            col += len(x)
    return ids, seg, pos, spans


def block_mask(seg: torch.Tensor, attn_implementation: str | None) -> torch.Tensor:
    """(B, 1, W, W) mask from segment ids (0 prompt, j + 1 response j, -1 padding): causal, and a response
    sees the prompt and itself. Boolean for SDPA, additive float otherwise."""
    width = seg.shape[1]
    q, k = seg[:, :, None], seg[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool, device=seg.device).tril()
    allowed = causal & (k >= 0) & ((k == 0) | (k == q))
    allowed |= torch.eye(width, dtype=torch.bool, device=seg.device) & (q < 0)  # pad queries see themselves: no NaN
    mask = allowed[:, None]
    if (attn_implementation or "sdpa") != "sdpa":
        mask = torch.zeros(mask.shape, dtype=torch.float32, device=seg.device).masked_fill(~mask,
                                                                                           torch.finfo(torch.float32).min)
    return mask


def packed_logprobs(model, rows: list[PackedRow], pad_id: int,
                    temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of every response in `rows`: (N, T) log-probs and (N, T) float mask, where N is
    the number of responses (ordered by their indices) and T the longest response; logits are divided by
    `temperature` as when sampling. Each row needs a non-empty prompt (its last token predicts a response's
    first token); an empty response gets an all-zero mask."""
    model_ = getattr(model, "module", model)
    device = next(model_.parameters()).device
    if not all(p for p, _, _ in rows):
        raise ValueError("a packed row needs a non-empty prompt")
    ids, seg, pos, spans = layout(rows, pad_id)
    width = ids.shape[1]
    src, tgt, owner = [], [], []  # flat position that predicts each response token, the token, its response
    lengths: dict[int, int] = {}
    for b, col, x, w in spans:  # the prompt's last token predicts a response's first
        preds = [len(rows[b][0]) - 1] + list(range(col, col + len(x) - 1))
        src += [b * width + c for c in preds][:len(x)]
        tgt += x
        owner += [w] * len(x)
        lengths[w] = len(x)
    ids, seg, pos = ids.to(device), seg.to(device), pos.to(device)
    mask = block_mask(seg, getattr(model_.config, "_attn_implementation", "sdpa"))
    hidden = model_.base_model(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
    picked = hidden.reshape(-1, hidden.shape[-1])[torch.tensor(src, dtype=torch.long, device=device)]
    flat = logprobs_from_logits(model_.get_output_embeddings()(picked), torch.tensor(tgt, device=device), temperature)
    index = sorted(lengths)
    base = index[0]
    if index != list(range(base, base + len(index))):
        raise ValueError("packed rows must number their responses consecutively")
    n, T = len(index), max(1, max(lengths.values()))
    out_mask = torch.zeros(n, T, dtype=torch.bool, device=device)
    for w, L in lengths.items():
        out_mask[w - base, :L] = True
    # tokens go in (response, position) order: sort the flat entries by owner (stable keeps token order)
    order = sorted(range(len(owner)), key=lambda i: owner[i])
    out = torch.zeros(n, T, dtype=flat.dtype, device=device)
    out = out.masked_scatter(out_mask, flat[torch.tensor(order, dtype=torch.long, device=device)])
    return out, out_mask.float()


def packed_scores(model, rows: list[PackedRow], pad_id: int, device) -> torch.Tensor:
    """Reward-model scores (`models.reward.raw_scores`, no offset) of every prompt + response of `rows`, in
    the order of their indices: one forward per row, each response pooled at its last token."""
    ids, seg, pos, spans = layout(rows, pad_id, align="right")
    ids, seg, pos = ids.to(device), seg.to(device), pos.to(device)
    hidden = backbone(model, ids, block_mask(seg, getattr(model.config, "_attn_implementation", "sdpa")), positions=pos)
    last_row = torch.tensor([b for b, _, _, _ in spans], device=device)
    last_col = torch.tensor([col + len(x) - 1 for _, col, x, _ in spans], device=device)
    values = score_head(model)(hidden[last_row, last_col]).squeeze(-1).float()
    where = [w for _, _, _, w in spans]
    order = torch.empty(len(spans), dtype=torch.long, device=device)
    order[torch.tensor(where, device=device) - min(where)] = torch.arange(len(spans), device=device)
    return values[order]
