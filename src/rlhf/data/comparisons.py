"""One data model for human feedback: a prompt, K >= 2 responses, and a ranking with ties.

A (chosen, rejected) pair is the K = 2 case. Loaders accept the conventions users already have:
  - TRL pairs:            {"prompt": str, "chosen": str, "rejected": str}
  - TRL conversational:   {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
                          (or chosen/rejected as whole conversations with an implicit shared prompt)
  - Anthropic HH-RLHF:    {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}
  - K-wise rankings:      {"prompt": str | [messages], "responses": [str], "ranks": [int]}
                          (rank 1 is best; equal ranks are ties)
"""
from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rlhf.data.jsonl import read_jsonl, write_jsonl
from rlhf.errors import RLHFError

Message = dict  # {"role": "user" | "assistant" | "system", "content": str}


@dataclass(frozen=True)
class Ranking:
    prompt: tuple[Message, ...]  # the conversation so far, ending with a user turn
    responses: tuple[str, ...]
    ranks: tuple[int, ...]  # lower is better; equal values are ties
    id: str | None = None
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        if len(self.responses) < 2:
            raise ValueError(f"a ranking needs at least 2 responses, got {len(self.responses)}")
        if len(self.ranks) != len(self.responses):
            raise ValueError(f"{len(self.ranks)} ranks for {len(self.responses)} responses")
        if any(not r.strip() for r in self.responses):
            raise ValueError("empty response")

    @property
    def k(self) -> int:
        return len(self.responses)

    def pairs(self) -> list[tuple[int, int]]:
        """(better, worse) index pairs: the C(K,2) comparisons of this ranking, less the ties."""
        return [(i, j) if self.ranks[i] < self.ranks[j] else (j, i)
                for i, j in itertools.combinations(range(self.k), 2) if self.ranks[i] != self.ranks[j]]

    def ties(self) -> list[tuple[int, int]]:
        return [(i, j) for i, j in itertools.combinations(range(self.k), 2) if self.ranks[i] == self.ranks[j]]

    @property
    def prompt_text(self) -> str:
        """The last user turn (for display and for plain-text prompts)."""
        return self.prompt[-1]["content"]

    def to_json(self) -> dict:
        row = {"prompt": list(self.prompt), "responses": list(self.responses), "ranks": list(self.ranks)}
        if self.id is not None:
            row["id"] = self.id
        if self.meta:
            row["meta"] = self.meta
        return row

    def to_trl_pairs(self) -> list[dict]:
        """TRL's explicit-prompt pairwise rows, one per untied pair."""
        return [{"prompt": self.prompt_text, "chosen": self.responses[i], "rejected": self.responses[j]}
                for i, j in self.pairs()]


def pair(prompt: str | list[Message], chosen: str, rejected: str, id: str | None = None) -> Ranking:
    return Ranking(_as_messages(prompt), (chosen, rejected), (1, 2), id)


@dataclass
class LoadReport:
    """What a loader kept and what it skipped, with reasons: never silent."""
    path: str
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # reason -> first line number

    def skip(self, reason: str, lineno: int) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, lineno)

    def as_dict(self) -> dict:
        return {"path": self.path, "kept": self.kept, "skipped": dict(self.skipped),
                "first_line_per_reason": self.examples}


def _as_messages(prompt) -> tuple[Message, ...]:
    if isinstance(prompt, str):
        return ({"role": "user", "content": prompt},)
    return tuple({"role": m["role"], "content": m["content"]} for m in prompt)


def _check_messages(value, key: str) -> list[Message]:
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise ValueError(f"'{key}' must be a list of {{role, content}} messages")
    return value


_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh_transcript(text: str) -> list[Message]:
    """Split an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") into messages."""
    parts = _TURN.split(text)
    if len(parts) < 3:
        raise ValueError("no Human/Assistant turns")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages


def from_hh(chosen: str, rejected: str) -> Ranking:
    """Shared prefix of turns becomes the prompt; the final assistant turns are the two responses."""
    c, r = parse_hh_transcript(chosen), parse_hh_transcript(rejected)
    if c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        raise ValueError("transcript does not end with an Assistant turn")
    if c[:-1] != r[:-1]:
        raise ValueError("chosen and rejected do not share the same prompt turns")
    if not any(m["role"] == "user" for m in c[:-1]):
        raise ValueError("transcript has no Human turn before the final Assistant turn")
    return Ranking(tuple(c[:-1]), (c[-1]["content"], r[-1]["content"]), (1, 2))


def _check_prompt(ranking: Ranking) -> None:
    # every encoder (reward model, PPO prompts) renders the prompt as a conversation awaiting the assistant
    if not ranking.prompt or ranking.prompt[-1]["role"] != "user":
        raise ValueError("the prompt must end with a user turn")


def parse_row(obj: dict) -> Ranking:
    """One JSON object in any supported convention -> Ranking (ValueError says what is wrong)."""
    rid = obj.get("id")
    rid = None if rid is None else str(rid)
    if "responses" in obj:
        for key in ("prompt", "ranks"):
            if key not in obj:
                raise ValueError(f"missing field '{key}'")
        responses, ranks = obj["responses"], obj["ranks"]
        if not isinstance(responses, list) or not all(isinstance(x, str) for x in responses):
            raise ValueError("'responses' must be a list of strings")
        if not isinstance(ranks, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in ranks):
            raise ValueError("'ranks' must be a list of integers")
        if len(ranks) != len(responses):
            raise ValueError(f"'ranks' names {len(ranks)} responses but there are {len(responses)}")
        prompt = obj["prompt"] if isinstance(obj["prompt"], str) else _check_messages(obj["prompt"], "prompt")
        if len(set(responses)) < len(responses):
            raise ValueError("duplicate responses in one ranking")
        ranking = Ranking(_as_messages(prompt), tuple(responses), tuple(ranks), rid, obj.get("meta") or {})
        _check_prompt(ranking)
        return ranking
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise ValueError(f"missing field '{key}'")
    chosen, rejected = obj["chosen"], obj["rejected"]
    if "prompt" not in obj and isinstance(chosen, str):
        if "\n\nAssistant:" not in chosen or "\n\nAssistant:" not in rejected:
            raise ValueError("no 'prompt' field and the transcript has no Assistant turn")
        ranking = from_hh(chosen, rejected)
    elif "prompt" not in obj:  # conversational, implicit prompt
        c, r = _check_messages(chosen, "chosen"), _check_messages(rejected, "rejected")
        if c[:-1] != r[:-1] or c[-1]["role"] != "assistant":
            raise ValueError("conversations must share all turns but a final assistant turn")
        ranking = Ranking(_as_messages(c[:-1]), (c[-1]["content"], r[-1]["content"]), (1, 2))
    else:
        prompt = obj["prompt"]
        if isinstance(chosen, list):
            chosen = _check_messages(chosen, "chosen")[-1]["content"]
            rejected = _check_messages(rejected, "rejected")[-1]["content"]
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise ValueError("'chosen' and 'rejected' must be strings or message lists")
        if not isinstance(prompt, str):
            prompt = _check_messages(prompt, "prompt")
        ranking = Ranking(_as_messages(prompt), (chosen, rejected), (1, 2))
    if ranking.responses[0].strip() == ranking.responses[1].strip():
        raise ValueError("chosen and rejected are identical")
    _check_prompt(ranking)
    return Ranking(ranking.prompt, ranking.responses, ranking.ranks, rid)


def load_rankings(path: str | Path, on_bad: str = "error",
                  limit: int | None = None) -> tuple[list[Ranking], LoadReport]:
    """Read a JSONL of comparisons or rankings. on_bad='error' stops at the first bad line (naming it);
    on_bad='skip' counts each skipped line by reason in the returned report."""
    if on_bad not in ("error", "skip"):
        raise RLHFError(f"on_bad must be 'error' or 'skip', got '{on_bad}'")
    report = LoadReport(str(path))
    rankings: list[Ranking] = []
    for lineno, obj in read_jsonl(path):
        try:
            rankings.append(parse_row(obj))
        except (ValueError, KeyError, TypeError) as exc:
            if on_bad == "error":
                raise RLHFError(f"{path}:{lineno}: {exc}") from None
            report.skip(str(exc), lineno)
            continue
        if limit is not None and len(rankings) >= limit:
            break
    report.kept = len(rankings)
    if not rankings:
        raise RLHFError(f"{path}: no usable comparisons ({dict(report.skipped) or 'file is empty'})")
    return rankings, report


def write_rankings(path: str | Path, rankings: Iterable[Ranking]) -> int:
    return write_jsonl(path, (r.to_json() for r in rankings))


def write_trl_pairs(path: str | Path, rankings: Iterable[Ranking]) -> int:
    return write_jsonl(path, (row for r in rankings for row in r.to_trl_pairs()))
