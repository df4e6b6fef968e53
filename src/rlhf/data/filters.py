"""Dialogue-data filtering (Gopher, Rae et al. 2021): keep a document only if it reads as a dialogue."""
from __future__ import annotations

import re

_PREFIX = re.compile(r"^\s*([A-Za-z][\w .'-]{0,30}?):")


def is_dialogue(document: str, min_turns: int = 6) -> bool:
    """True when the document has at least `min_turns` consecutive paragraphs alternating between two
    distinct speaker prefixes ("A:" / "B:", "Human:" / "Assistant:", ...)."""
    paragraphs = [p for p in re.split(r"\n\s*\n|\n", document) if p.strip()]
    run, prev, prev2 = 0, None, None
    for para in paragraphs:
        m = _PREFIX.match(para)
        speaker = m.group(1).strip() if m else None
        if speaker is None:
            run, prev, prev2 = 0, None, None
            continue
        if prev is None:
            run = 1
        elif speaker != prev and (prev2 is None or speaker == prev2):
            run += 1
        else:  # same speaker twice, or a third speaker: a new run starts here
            run = 2 if speaker != prev else 1
            prev2 = prev if speaker != prev else None
            prev = speaker
            continue
        prev2, prev = prev, speaker
        if run >= min_turns:
            return True
    return False


def filter_dialogues(documents: list[str], min_turns: int = 6) -> list[str]:
    return [d for d in documents if is_dialogue(d, min_turns)]


def distinct_responses(responses: list[str]) -> tuple[list[str], int, int]:
    """(the non-empty responses, first occurrences only, in order; how many were empty; how many repeated)."""
    kept, empty, repeated = [], 0, 0
    for r in responses:
        if not r.strip():
            empty += 1
        elif r in kept:
            repeated += 1
        else:
            kept.append(r)
    return kept, empty, repeated
