"""Prompt sets for sampling (RL, labeling): JSONL of {"prompt": str | messages}."""
from __future__ import annotations

from pathlib import Path

from rlhf.data.jsonl import read_jsonl
from rlhf.errors import RLHFError


def load_prompts(path: str | Path, messages: bool = True) -> list:
    """Every line's "prompt" (a string, or a message list when `messages`; also read from "messages").
    A line without one is an error naming file and line; so is an empty set."""
    prompts = []
    for lineno, obj in read_jsonl(path):
        p = obj.get("prompt", obj.get("messages")) if messages else obj.get("prompt")
        if not p:
            what = "'prompt' (string or messages)" if messages else "field 'prompt'"
            raise RLHFError(f"{path}:{lineno}: missing {what}")
        prompts.append(p)
    if not prompts:
        raise RLHFError(f"{path}: the prompt set is empty")
    return prompts
