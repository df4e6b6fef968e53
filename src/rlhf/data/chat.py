"""Token-level rendering of chat `messages`, consistent with the tokenizer's chat template.

Two renderings, chosen by the tokenizer:

* The built-in one, for the world's own tokenizer (its template is `BUILTIN_TEMPLATE`) and for any
  tokenizer without a chat template: a dialogue is rendered as segments, each tokenized on its own:
  "Human: q\\n\\nAssistant:" (context), " answer" + EOS (trained), "\\n\\n" (context).
* The model's own chat template (`tokenizer.apply_chat_template`) for every other tokenizer that has one,
  e.g. SmolLM2's ChatML: "<|im_start|>user\\nq<|im_end|>\\n<|im_start|>assistant\\n" (context),
  "answer<|im_end|>" (trained: the turn up to and including EOS), "\\n" (context). Token ids are exactly
  apply_chat_template's; the trained spans are found by rendering prefixes of the dialogue and diffing,
  which needs a prefix-stable template (rendering the first k messages is a prefix of rendering all).

Either way the rollout engine samples a response as the continuation of `encode_prompt` that ends with
EOS, and `encode_response` gives that continuation for a finished text, so what SFT trains is exactly
what RL samples. The end of a response is EOS: a template must close an assistant turn with the
tokenizer's EOS token (ChatML's <|im_end|>), otherwise sampling would not know where a turn ends.
"""
from __future__ import annotations

from rlhf.errors import RLHFError

IGNORE = -100

# The world's Human/Assistant template (saved with its tokenizer: `rlhf.models.tokenizer.CHAT_TEMPLATE`).
# Every assistant turn ends with EOS. A prompt ends with "Assistant:" and the response continues it with
# " " + text + EOS, which is exactly what SFT and rollouts tokenize. HF renders templates with
# trim_blocks (a newline right after a {% %} tag is dropped), so the separator after an assistant turn
# is written as an expression.
BUILTIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}Human: {{ m['content'] }}\n\n"
    "{% elif m['role'] == 'assistant' %}Assistant: {{ m['content'] }}{{ eos_token }}"
    "{% if not loop.last %}{{ '\\n\\n' }}{% endif %}"
    "{% else %}{{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
_PROBE = [{"role": "user", "content": "Hi"}]  # the prompt `encode_response` renders a response after


def _check(messages: list[dict]) -> None:
    if not messages or not all(isinstance(m, dict) and m.get("role") in ("user", "assistant", "system")
                                and isinstance(m.get("content"), str) for m in messages):
        raise RLHFError("messages must be a non-empty list of {role: user|assistant|system, content: str}")


def uses_model_template(tokenizer) -> bool:
    """True when `tokenizer` has a chat template of its own (not the world's built-in one)."""
    template = getattr(tokenizer, "chat_template", None)
    return bool(template) and template != BUILTIN_TEMPLATE


# ---------------------------------------------------------------- the built-in Human/Assistant rendering


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


def _builtin_dialogue(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in _segments(messages, add_generation_prompt=False):
        toks = tokenizer.encode(text, add_special_tokens=False)
        if trained:
            toks = toks + [tokenizer.eos_token_id]
        ids += toks
        labels += toks if trained else [IGNORE] * len(toks)
    return ids, labels


def _builtin_prompt(tokenizer, messages: list[dict]) -> list[int]:
    ids: list[int] = []
    for text, trained in _segments(messages, add_generation_prompt=True):
        ids += tokenizer.encode(text, add_special_tokens=False)
        if trained:
            ids.append(tokenizer.eos_token_id)
    return ids


# ---------------------------------------------------------------- the model's own chat template


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # noqa: BLE001 - jinja raises TemplateError, templates raise their own messages
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if any(m["role"] == "system" for m in messages):
            raise RLHFError(f"the chat template of {_name(tokenizer)} cannot render a system turn: {msg}") from None
        raise RLHFError(f"the chat template of {_name(tokenizer)} cannot render these messages: {msg}") from None
    for m in messages:
        if m["role"] == "system" and m["content"].strip() and m["content"] not in text:
            raise RLHFError(f"the chat template of {_name(tokenizer)} cannot render a system turn (it drops it)")
    return text


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _boundary(tokenizer, full_text: str, full_ids: list[int], prefix_text: str, what: str) -> tuple[int, bool]:
    """(index of the first token of `full_ids`, the encoding of `full_text`, that is not all inside
    `prefix_text`; whether the encoding of `prefix_text` is exactly a token prefix of `full_ids`).
    `prefix_text` must be a text prefix of `full_text` (a prefix-stable template). Where a token straddles
    the boundary (content that starts with whitespace merges with the template's), it counts as after it,
    as in transformers' own assistant-token mask."""
    if not full_text.startswith(prefix_text):
        raise RLHFError(f"the chat template of {_name(tokenizer)} is not prefix-stable: rendering {what} is not a "
                        "prefix of rendering the whole dialogue, so the assistant tokens cannot be found")
    prefix_ids = _encode(tokenizer, prefix_text)
    if full_ids[:len(prefix_ids)] == prefix_ids:
        return len(prefix_ids), True
    if not getattr(tokenizer, "is_fast", False):
        raise RLHFError(f"{_name(tokenizer)}: rendering {what} is not a token prefix of the whole dialogue "
                        "(tokens merge across the turn boundary) and a slow tokenizer has no offsets to split them")
    offsets = tokenizer(full_text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    cut = len(prefix_text)
    return next((i for i, (_, end) in enumerate(offsets) if end > cut), len(full_ids)), False


def _turn_end(tokenizer, ids: list[int], start: int, stop: int) -> int:
    """One past the first EOS in ids[start:stop]: the end of an assistant turn."""
    eos = tokenizer.eos_token_id
    for i in range(start, stop):
        if ids[i] == eos:
            return i + 1
    raise RLHFError(f"the chat template of {_name(tokenizer)} does not end an assistant turn with the EOS token "
                    f"{tokenizer.eos_token!r}; set the tokenizer's eos_token to the template's end-of-turn token")


def _template_dialogue(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    full_text = _render(tokenizer, messages, add_generation_prompt=False)
    ids = _encode(tokenizer, full_text)
    labels = [IGNORE] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if i == 0:
            raise RLHFError("with a model's chat template an assistant turn must follow a user or system turn")
        start = _boundary(tokenizer, full_text, ids, _render(tokenizer, messages[:i], add_generation_prompt=True),
                          f"the first {i} messages with a generation prompt")[0]
        stop = (len(ids) if i == len(messages) - 1 else
                _boundary(tokenizer, full_text, ids, _render(tokenizer, messages[:i + 1], add_generation_prompt=False),
                          f"the first {i + 1} messages")[0])
        end = _turn_end(tokenizer, ids, start, stop)
        labels[start:end] = ids[start:end]
    return ids, labels


def _template_response(tokenizer, response: str) -> list[int]:
    prompt_text = _render(tokenizer, _PROBE, add_generation_prompt=True)
    full_text = _render(tokenizer, _PROBE + [{"role": "assistant", "content": response}], add_generation_prompt=False)
    ids = _encode(tokenizer, full_text)
    start, exact = _boundary(tokenizer, full_text, ids, prompt_text, "a prompt with a generation prompt")
    if not exact:  # the response's first token merges with the prompt's last: the engine samples it alone
        ids, start = _encode(tokenizer, full_text[len(prompt_text):]), 0
    return ids[start:_turn_end(tokenizer, ids, start, len(ids))]


def template_end_of_turn(tokenizer) -> str | None:
    """The special token the model's chat template closes an assistant turn with (ChatML: <|im_end|>), or None
    when the tokenizer has no template or the turn's first token after the reply is not a special token."""
    if not uses_model_template(tokenizer):
        return None
    reply = "Hello there"
    text = _render(tokenizer, _PROBE + [{"role": "assistant", "content": reply}], add_generation_prompt=False)
    at = text.rfind(reply)
    if at < 0:
        return None
    rest = _encode(tokenizer, text[at + len(reply):])
    specials = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    first = next((i for i in rest if tokenizer.decode([i]).strip()), None)  # skip whitespace-only tokens
    return tokenizer.convert_ids_to_tokens(first) if first is not None and first in specials else None


# ---------------------------------------------------------------- the public API every trainer uses


def encode_dialogue(tokenizer, messages: list[dict], max_len: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels): labels are IGNORE everywhere except assistant tokens and their EOS."""
    _check(messages)
    ids, labels = (_template_dialogue if uses_model_template(tokenizer) else _builtin_dialogue)(tokenizer, messages)
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels


def encode_prompt(tokenizer, messages: list[dict] | str) -> list[int]:
    """Token ids of a conversation ready for the assistant's next turn (the template's generation prompt;
    'Assistant:' in the built-in rendering)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    _check(messages)
    if messages[-1]["role"] != "user":
        raise RLHFError("a prompt must end with a user turn")
    if uses_model_template(tokenizer):
        return _encode(tokenizer, _render(tokenizer, messages, add_generation_prompt=True))
    return _builtin_prompt(tokenizer, messages)


def encode_response(tokenizer, response: str) -> list[int]:
    """A finished response as the engine would have sampled it after `encode_prompt`: the assistant turn up to
    and including EOS (' text' + EOS in the built-in rendering)."""
    if uses_model_template(tokenizer):
        return _template_response(tokenizer, response)
    return tokenizer.encode(" " + response, add_special_tokens=False) + [tokenizer.eos_token_id]


def decode_response(tokenizer, ids: list[int]) -> str:
    """The text of a sampled response: everything before the first EOS (padding, even where pad = EOS,
    only ever follows it)."""
    ids = list(ids)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos in ids:
        ids = ids[:ids.index(eos)]
    if pad is not None and pad != eos:
        ids = [i for i in ids if i != pad]
    return tokenizer.decode(ids).strip()


def encode_prompt_response(tokenizer, prompt, response: str, max_len: int) -> list[int]:
    """Prompt + response (as `encode_response`), the prompt cut from the left when the whole would exceed max_len."""
    p, r = encode_prompt(tokenizer, prompt), encode_response(tokenizer, response)
    r = r[:max_len]
    return p[max(0, len(p) - (max_len - len(r))):] + r
