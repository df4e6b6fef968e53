"""Import tasks from JSONL, all or nothing.

Every line is checked before anything is written, and bad lines are reported (file:line: problem;
the first MAX_PROBLEMS of them and the total count), so a user fixes the file in one pass and never
has to clean up half an import. Files must be UTF-8.

Accepted rows:
  {"id": "q1", "prompt": str | [messages], "responses": [str, ...], "kind": "text"}   K >= 2
  {"id": "q2", "prompt": ..., "chosen": str, "rejected": str}                         K = 2
  {"id": "c1", "prompt": ..., "responses": [left clip, right clip], "kind": "clip"}     a clip pair (K = 2)
Gold files add the known answer: "ranks": [int, ...] (rank 1 best, ties equal), or imply it with
chosen/rejected. "kind" is "text" (default), "image" (also GIF), "video" or "clip" (a pair of trajectory clips,
GIF or video, answered left / right / equal / can't tell); for media kinds each response is an http(s) URL or a
path under the project's media root (see media.py for the rule).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.errors import RLHFError
from rlhf.feedback.app.db import DatabaseFileGuard
from rlhf.feedback.app.media import MediaError, check_media_root, is_url, resolve_media
from rlhf.feedback.app.models import Project, Task

MAX_UPLOAD_BYTES = 16 * 2**20  # one task or gold file uploaded on the dashboard
KINDS = ("text", "image", "video", "clip")
CLIP_SUFFIXES = (".gif", ".webp", ".png", ".mp4", ".m4v", ".webm", ".ogv")  # what a clip pair may show
MAX_PROBLEMS = 50  # problems listed in a failed import's report (all are counted)
MAX_TASK_ID = Task.external_id.type.length  # characters of a task id (the column's size: PostgreSQL enforces it)


class Problems:
    """The first MAX_PROBLEMS problem lines and how many there were in all."""

    def __init__(self, limit: int = MAX_PROBLEMS):
        self.limit, self.count, self.shown = limit, 0, []

    def append(self, line: str) -> None:
        self.count += 1
        if len(self.shown) < self.limit:
            self.shown.append(line)

    def __bool__(self) -> bool:
        return self.count > 0

    def report(self) -> str:
        more = f", the first {len(self.shown)} shown" if self.count > len(self.shown) else ""
        return f"nothing imported; {self.count} problem(s){more}:\n" + "\n".join(self.shown)


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
    if kind == "clip" and len(responses) != 2:
        raise ValueError(f"a 'clip' task is a pair: 2 responses (left and right clip), got {len(responses)}")
    if kind == "clip" and not all(r.split("?")[0].lower().endswith(CLIP_SUFFIXES) for r in responses):
        raise ValueError(f"a 'clip' task's responses must be clip files ({', '.join(CLIP_SUFFIXES)})")
    rid = obj.get("id")
    if rid is not None and (not isinstance(rid, (str, int)) or isinstance(rid, bool) or not str(rid).strip()):
        raise ValueError("'id' must be a non-empty string or integer")
    if rid is not None and len(str(rid)) > MAX_TASK_ID:
        raise ValueError(f"'id' is {len(str(rid))} characters long; at most {MAX_TASK_ID} are allowed")
    if rid is not None and "\0" in str(rid):
        raise ValueError("'id' contains a NUL character")
    return (None if rid is None else str(rid)), kind, prompt, responses, ranks


def _content_id(prompt: list[dict], responses: list[str]) -> str:
    """Rows without an id get one derived from their content: reimporting them is then a duplicate."""
    return "h" + hashlib.sha1(json.dumps([prompt, responses], sort_keys=True).encode()).hexdigest()[:16]


def read_task_file(path: str | Path, gold: bool, errors: Problems, name: str | None = None,
                   guard: DatabaseFileGuard | None = None) -> list[TaskRow]:
    """Rows of one file; `name` is how reports call the file (default: its path)."""
    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        errors.append(f"{name}: file not found")
        return []
    if guard is not None and path in guard:  # opening it here would drop SQLite's locks on it
        errors.append(f"{name}: this is the labeling database itself, not a task file")
        return []
    rows = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{name}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                errors.append(f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
                              "save the file as UTF-8")
                continue
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
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
                 gold_path: str | Path | None = None, *, media_root: str | None = None,
                 guard: DatabaseFileGuard | None = None, names: tuple[str | None, str | None] = (None, None),
                 ) -> tuple[int, int]:
    """Check every row of both files, then insert all of them in one transaction (or none).
    `media_root` sets the project's media root if it has none yet; `guard` names the app's own
    database files, which are never read as task or media files; `names` are how reports call
    the two files. Returns (regular tasks, gold tasks) imported."""
    project = db.scalar(select(Project).where(Project.name == project_name))
    if project is None:
        raise RLHFError(f"no project named {project_name!r}")
    if path is None and gold_path is None:
        raise RLHFError("nothing to import: give a task file and/or a gold file")
    guard = guard or DatabaseFileGuard(None)
    if media_root is not None:
        media_root = check_media_root(media_root)
        if project.media_root not in (None, media_root):
            raise RLHFError(f"project {project_name!r} already has the media root {project.media_root}; "
                            f"its tasks' paths are relative to it")
    root = project.media_root or media_root
    errors = Problems()
    rows = (read_task_file(path, False, errors, names[0], guard) if path else []) + \
           (read_task_file(gold_path, True, errors, names[1], guard) if gold_path else [])
    for row in rows:
        if row.kind == "text":
            continue
        for i, ref in enumerate(row.responses, 1):
            if not is_url(ref):
                try:
                    resolve_media(root, ref, guard)
                except MediaError as exc:
                    errors.append(f"{row.where}: response {i}: {exc}")
    existing = set(db.scalars(select(Task.external_id).where(Task.project_id == project.id)))
    seen: dict[str, str] = {}
    for row in rows:
        if row.external_id in existing:
            errors.append(f"{row.where}: id {row.external_id!r} is already in project {project_name!r}")
        elif row.external_id in seen:
            errors.append(f"{row.where}: duplicate id {row.external_id!r} (first at {seen[row.external_id]})")
        seen.setdefault(row.external_id, row.where)
    if errors:
        raise RLHFError(errors.report())
    if not rows:
        raise RLHFError("nothing imported: the file(s) hold no tasks")
    project.media_root = root
    db.add_all(Task(project_id=project.id, external_id=r.external_id, kind=r.kind, prompt=r.prompt,
                    responses=r.responses, is_gold=r.gold_ranks is not None, gold_ranks=r.gold_ranks)
               for r in rows)
    db.commit()
    n_gold = sum(r.gold_ranks is not None for r in rows)
    return len(rows) - n_gold, n_gold
