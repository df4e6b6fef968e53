"""Import tasks from JSONL, all or nothing.

Every line is checked before anything is written, and every bad line is reported (file:line:
problem), so a user fixes the whole file in one pass and never has to clean up half an import.

Accepted rows:
  {"id": "q1", "prompt": str | [messages], "responses": [str, ...], "kind": "text"}   K >= 2
  {"id": "q2", "prompt": ..., "chosen": str, "rejected": str}                         K = 2
Gold files add the known answer: "ranks": [int, ...] (rank 1 best, ties equal), or imply it with
chosen/rejected. "kind" is "text" (default), "image" (also GIF) or "video"; for media kinds each
response is a file path or an http(s) URL of a clip.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.errors import RLHFError
from rlhf.feedback.app.models import Project, Task

KINDS = ("text", "image", "video")


@dataclass
class TaskRow:
    external_id: str
    kind: str
    prompt: list[dict]
    responses: list[str]
    gold_ranks: list[int] | None  # set exactly for rows of a gold file
    where: str  # file:line, for duplicate reports


def _prompt(value) -> list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("empty 'prompt'")
        return [{"role": "user", "content": value}]
    if (isinstance(value, list) and value
            and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                    for m in value)):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ValueError("'prompt' must be a string or a non-empty list of {role, content} messages")


def parse_task(obj: dict, gold: bool) -> tuple[str | None, str, list[dict], list[str], list[int] | None]:
    """One JSON object -> (id or None, kind, prompt, responses, gold ranks); ValueError names the problem."""
    if "prompt" not in obj:
        raise ValueError("missing field 'prompt'")
    prompt = _prompt(obj["prompt"])
    ranks = None
    if "responses" in obj:
        responses = obj["responses"]
        if gold:
            if "ranks" not in obj:
                raise ValueError("missing field 'ranks' (a gold task needs its known ranking)")
            ranks = obj["ranks"]
    elif "chosen" in obj or "rejected" in obj:
        for key in ("chosen", "rejected"):
            if not isinstance(obj.get(key), str):
                raise ValueError(f"missing or non-string field '{key}'")
        responses = [obj["chosen"], obj["rejected"]]
        ranks = [1, 2] if gold else None
    else:
        raise ValueError("missing field 'responses' (or 'chosen' and 'rejected')")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise ValueError("'responses' must be a list of strings")
    if len(responses) < 2:
        raise ValueError(f"need at least 2 responses (K >= 2), got {len(responses)}")
    if any(not r.strip() for r in responses):
        raise ValueError("empty response")
    if len(set(responses)) < len(responses):
        raise ValueError("duplicate responses in one task")
    if gold:
        if (not isinstance(ranks, list) or len(ranks) != len(responses)
                or not all(isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= len(responses)
                           for r in ranks)):
            raise ValueError(f"'ranks' must be {len(responses)} integers between 1 and {len(responses)}")
        if len(set(ranks)) == 1:
            raise ValueError("gold 'ranks' are all tied: nothing to check annotators against")
    kind = obj.get("kind", "text")
    if kind not in KINDS:
        raise ValueError(f"'kind' must be one of {KINDS}, got {kind!r}")
    rid = obj.get("id")
    if rid is not None and (not isinstance(rid, (str, int)) or isinstance(rid, bool) or not str(rid).strip()):
        raise ValueError("'id' must be a non-empty string or integer")
    return (None if rid is None else str(rid)), kind, prompt, responses, ranks


def _content_id(prompt: list[dict], responses: list[str]) -> str:
    """Rows without an id get one derived from their content: reimporting them is then a duplicate."""
    return "h" + hashlib.sha1(json.dumps([prompt, responses], sort_keys=True).encode()).hexdigest()[:16]


def read_task_file(path: str | Path, gold: bool, errors: list[str]) -> list[TaskRow]:
    path = Path(path)
    if not path.is_file():
        errors.append(f"{path}: file not found")
        return []
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(obj, dict):
                errors.append(f"{where}: expected a JSON object, got {type(obj).__name__}")
                continue
            try:
                rid, kind, prompt, responses, ranks = parse_task(obj, gold)
            except ValueError as exc:
                errors.append(f"{where}: {exc}")
                continue
            rows.append(TaskRow(rid or _content_id(prompt, responses), kind, prompt, responses, ranks, where))
    return rows


def import_tasks(db: Session, project_name: str, path: str | Path | None = None,
                 gold_path: str | Path | None = None) -> tuple[int, int]:
    """Check every row of both files, then insert all of them in one transaction (or none).
    Returns (regular tasks, gold tasks) imported."""
    project = db.scalar(select(Project).where(Project.name == project_name))
    if project is None:
        raise RLHFError(f"no project named {project_name!r}")
    if path is None and gold_path is None:
        raise RLHFError("nothing to import: give a task file and/or a gold file")
    errors: list[str] = []
    rows = (read_task_file(path, False, errors) if path else []) + \
           (read_task_file(gold_path, True, errors) if gold_path else [])
    existing = set(db.scalars(select(Task.external_id).where(Task.project_id == project.id)))
    seen: dict[str, str] = {}
    for row in rows:
        if row.external_id in existing:
            errors.append(f"{row.where}: id {row.external_id!r} is already in project {project_name!r}")
        elif row.external_id in seen:
            errors.append(f"{row.where}: duplicate id {row.external_id!r} (first at {seen[row.external_id]})")
        seen.setdefault(row.external_id, row.where)
    if errors:
        raise RLHFError(f"nothing imported; {len(errors)} problem(s):\n" + "\n".join(errors))
    if not rows:
        raise RLHFError("nothing imported: the file(s) hold no tasks")
    db.add_all(Task(project_id=project.id, external_id=r.external_id, kind=r.kind, prompt=r.prompt,
                    responses=r.responses, is_gold=r.gold_ranks is not None, gold_ranks=r.gold_ranks)
               for r in rows)
    db.commit()
    n_gold = sum(r.gold_ranks is not None for r in rows)
    return len(rows) - n_gold, n_gold
