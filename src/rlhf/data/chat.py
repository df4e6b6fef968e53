"""Token-level rendering of chat `messages`, consistent with the tokenizer's chat template.

A dialogue is rendered as segments, each tokenized on its own: "Human: q\\n\\nAssistant:" (context),
" answer" + EOS (trained), "\\n\\n" (context). The rollout engine samples responses as the same
" answer" + EOS continuation of `encode_prompt`, so what SFT trains is exactly what RL samples.
"""
from __future__ import annotations

from rlhf.errors import RLHFError

IGNORE = -100


def _check(messages: list[dict]) -> None:
    if not messages or not all(isinstance(m, dict) and m.get("role") in ("user", "assistant", "system")
                                and isinstance(m.get("content"), str) for m in messages):
        raise RLHFError("messages must be a non-empty list of {role: user|assistant|system, content: str}")


def _segments(messages: list[dict], add_generation_prompt: bool) -> list[tuple[str, bool]]:
    _check(messages)
    segs: list[tuple[str, bool]] = []
    for i, m in enumerate(messages):
        if m["role"] == "user":
            segs.append((f"Human: {m['content']}\n\nAssistant:", False))
        elif m["role"] == "assistant":
            if not segs or not segs[-1][0].endswith("Assistant:"):
                segs.append(("Assistant:", False))
            segs.append((" " + m["content"], True))
            if i < len(messages) - 1:
                segs.append(("\n\n", False))
        else:
            segs.append((m["content"] + "\n\n", False))
    if not add_generation_prompt and segs and segs[-1][0].endswith("Assistant:"):
        segs[-1] = (segs[-1][0][: -len("Assistant:")], False)
    return segs


def encode_dialogue(tokenizer, messages: list[dict], max_len: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels): labels are IGNORE everywhere except assistant tokens and their EOS."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in _segments(messages, add_generation_prompt=False):
        toks = tokenizer.encode(text, add_special_tokens=False)
        if trained:
            toks = toks + [tokenizer.eos_token_id]
        ids += toks
        labels += toks if trained else [IGNORE] * len(toks)
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels


def encode_prompt(tokenizer, messages: list[dict] | str) -> list[int]:
    """Token ids of a conversation ready for the assistant's next turn (ends with 'Assistant:')."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if messages[-1]["role"] != "user":
        raise RLHFError("a prompt must end with a user turn")
    ids: list[int] = []
    for text, trained in _segments(messages, add_generation_prompt=True):
        ids += tokenizer.encode(text, add_special_tokens=False)
        if trained:
            ids.append(tokenizer.eos_token_id)
    return ids


def encode_response(tokenizer, response: str) -> list[int]:
    """A finished response as the engine would have sampled it: ' text' + EOS."""
    return tokenizer.encode(" " + response, add_special_tokens=False) + [tokenizer.eos_token_id]


def decode_response(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode([i for i in ids if i not in (tokenizer.eos_token_id, tokenizer.pad_token_id)]).strip()


def encode_prompt_response(tokenizer, prompt, response: str, max_len: int) -> list[int]:
    """Prompt + ' response' + EOS, the prompt cut from the left when the whole would exceed max_len."""
    p, r = encode_prompt(tokenizer, prompt), encode_response(tokenizer, response)
    r = r[:max_len]
    return p[max(0, len(p) - (max_len - len(r))):] + r
