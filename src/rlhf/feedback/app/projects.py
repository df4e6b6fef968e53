"""Projects, handing tasks to annotators, and recording their answers.

Allocation rule: an annotator with no pending work in a project gets a batch of up to `batch_size`
tasks: regular tasks that still have fewer than `overlap` annotators (fullest first, so overlapping
labels accumulate early) plus unseen gold tasks at `gold_fraction` of the batch, shuffled together
so gold is indistinguishable. Each assignment stores its own random response order.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlhf.errors import RLHFError
from rlhf.feedback.app.models import Assignment, Label, Project, Task, User

LIKERT = range(1, 8)
FLAGS = {"harmful": "Harmful", "made_up_facts": "Made-up facts", "ignores_instructions": "Ignores instructions"}
FLAG_KEYS = tuple(FLAGS)
MAX_TEXT = 2000
MAX_OVERLAP = 100
MAX_BATCH = 1000
MAX_PROJECT_NAME = 100
# Letters and digits of any script, space and _ . @ + ( ) -; no control characters, quotes or
# slashes, so a name is safe in URLs, file names and headers. Not starting with a dot or space.
_PROJECT_NAME = re.compile(r"[^\W][\w .@+()-]{0,%d}" % (MAX_PROJECT_NAME - 1))


def check_project_name(name: str) -> str:
    if not isinstance(name, str) or _PROJECT_NAME.fullmatch(name) is None or name != name.strip():
        shown = name if len(name) <= 120 else name[:120] + "..."
        raise RLHFError(f"bad project name {shown!r}: 1-{MAX_PROJECT_NAME} letters, digits, spaces or _ . @ + ( ) -, "
                        "starting with a letter, digit or _")
    return name


def create_project(db: Session, name: str, overlap: int = 1, gold_fraction: float = 0.0,
                   batch_size: int = 10, media_root: str | None = None) -> Project:
    """`media_root`: the folder holding the project's local media files (see media.py)."""
    from rlhf.feedback.app.media import check_media_root

    name = check_project_name(name.strip())
    if not 1 <= overlap <= MAX_OVERLAP:
        raise RLHFError(f"--overlap must be in 1..{MAX_OVERLAP}, got {overlap}")
    if not 0.0 <= gold_fraction < 1.0:
        raise RLHFError(f"--gold-fraction must be in [0, 1), got {gold_fraction}")
    if not 1 <= batch_size <= MAX_BATCH:
        raise RLHFError(f"batch size must be in 1..{MAX_BATCH}, got {batch_size}")
    root = None if media_root is None else check_media_root(media_root)
    if db.scalar(select(Project).where(Project.name == name)):
        raise RLHFError(f"project {name!r} already exists")
    project = Project(name=name, overlap=overlap, gold_fraction=gold_fraction, batch_size=batch_size, allocations=0,
                      media_root=root)
    db.add(project)
    db.commit()
    return project


def get_project(db: Session, name: str) -> Project:
    project = db.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise RLHFError(f"no project named {name!r}")
    return project


@dataclass
class Progress:
    done: int
    assigned: int


def progress(db: Session, project: Project, user: User) -> Progress:
    rows = db.execute(select(Assignment.status, func.count()).join(Task)
                      .where(Task.project_id == project.id, Assignment.user_id == user.id)
                      .group_by(Assignment.status)).all()
    counts = dict(rows)
    return Progress(done=counts.get("done", 0) + counts.get("skipped", 0), assigned=sum(counts.values()))


def _pending(db: Session, project: Project, user: User) -> Assignment | None:
    return db.scalar(select(Assignment).join(Task)
                     .where(Task.project_id == project.id, Assignment.user_id == user.id,
                            Assignment.status == "pending")
                     .order_by(Assignment.id).limit(1))


def next_assignment(db: Session, project: Project, user: User) -> Assignment | None:
    """The annotator's oldest pending assignment, allocating a new batch when none is left."""
    pending = _pending(db, project, user)
    if pending is not None:
        return pending
    # Lock the project row first (PostgreSQL row lock / SQLite write lock), so two annotators
    # allocating at once cannot both take the last free overlap slot of a task.
    db.execute(update(Project).where(Project.id == project.id).values(allocations=Project.allocations + 1))
    pending = _pending(db, project, user)  # a concurrent request of this same user may have allocated
    if pending is None:
        _allocate_batch(db, project, user)
    db.commit()
    return _pending(db, project, user)


def _allocate_batch(db: Session, project: Project, user: User) -> None:
    mine = select(Assignment.task_id).where(Assignment.user_id == user.id)
    taken = (select(Assignment.task_id, func.count().label("n")).group_by(Assignment.task_id).subquery())
    regular = db.scalars(
        select(Task.id).outerjoin(taken, taken.c.task_id == Task.id)
        .where(Task.project_id == project.id, Task.is_gold.is_(False), Task.id.not_in(mine),
               func.coalesce(taken.c.n, 0) < project.overlap)
        .order_by(func.coalesce(taken.c.n, 0).desc(), Task.id)
        .limit(project.batch_size)).all()
    if not regular:
        return  # only gold left would tell annotators which tasks are gold
    gold_pool = db.scalars(select(Task.id).where(Task.project_id == project.id, Task.is_gold.is_(True),
                                                 Task.id.not_in(mine))).all()
    f = project.gold_fraction
    n_gold = min(len(gold_pool), round(len(regular) * f / (1 - f)))
    rng = random.SystemRandom()
    chosen = list(regular) + rng.sample(list(gold_pool), n_gold)
    rng.shuffle(chosen)
    k_of = dict(db.execute(select(Task.id, Task.responses).where(Task.id.in_(chosen))).all())
    for task_id in chosen:
        order = list(range(len(k_of[task_id])))
        rng.shuffle(order)
        db.add(Assignment(task_id=task_id, user_id=user.id, shown_order=order, status="pending"))
    db.flush()


class BadLabel(ValueError):
    """A submitted label that does not fit its task (the client is at fault: HTTP 422)."""


def _clean_text(value, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise BadLabel(f"{what} must be text of at most {MAX_TEXT} characters")
    return value


def validate_label(task: Task, ranks, ratings, flags) -> tuple[list[int], list[int] | None, list[dict] | None]:
    """Check a label given in the task's original response order; ranks 1..K, ties allowed."""
    k = len(task.responses)

    def ints(values, lo, hi, what):
        if (not isinstance(values, list) or len(values) != k
                or not all(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi for v in values)):
            raise BadLabel(f"{what} must be a list of {k} integers in {lo}..{hi}")
        return values

    ranks = ints(ranks, 1, k, "ranks")
    if task.kind == "clip":  # a clip pair: left / right / equal (ranks [1, 2], [2, 1], [1, 1]); nothing else
        if ranks not in ([1, 2], [2, 1], [1, 1]):
            raise BadLabel("a clip pair's ranks must be [1, 2], [2, 1] or [1, 1] (equal)")
        if ratings is not None or flags not in (None, [], [{}, {}]):
            raise BadLabel("a clip pair takes no ratings or flags")
        return ranks, None, None
    ratings = ints(ratings, LIKERT.start, LIKERT.stop - 1, "ratings")
    if flags is None:
        flags = [{} for _ in range(k)]
    if not isinstance(flags, list) or len(flags) != k or not all(isinstance(f, dict) for f in flags):
        raise BadLabel(f"flags must be a list of {k} objects")
    clean = []
    for f in flags:
        unknown = set(f) - set(FLAG_KEYS) - {"other"}
        if unknown:
            raise BadLabel(f"unknown flag(s) {sorted(unknown)}; known: {list(FLAG_KEYS) + ['other']}")
        entry = {}
        for key in FLAG_KEYS:
            value = f.get(key, False)
            if not isinstance(value, bool):  # "false" must not count as true
                raise BadLabel(f"flag {key!r} must be true or false (a JSON boolean), got {value!r}")
            entry[key] = value
        entry["other"] = _clean_text(f.get("other"), "the 'other' flag")
        clean.append(entry)
    return ranks, ratings, clean


def submit(db: Session, assignment: Assignment, *, ranks=None, ratings=None, flags=None,
           skip_reason: str | None = None) -> bool:
    """Record the answer to an assignment. Returns False when it was already answered: a resubmit
    (double click, retried request) changes nothing, so every label is stored exactly once."""
    if assignment.label is not None:
        return False
    if skip_reason is not None:
        reason = _clean_text(skip_reason, "the skip reason")
        if reason is None:
            raise BadLabel("a skip needs a reason")
        label, status = Label(assignment_id=assignment.id, skipped=True, skip_reason=reason), "skipped"
    else:
        ranks, ratings, flags = validate_label(assignment.task, ranks, ratings, flags)
        label = Label(assignment_id=assignment.id, skipped=False, ranks=ranks, ratings=ratings, flags=flags)
        status = "done"
    db.add(label)
    assignment.status = status
    try:
        db.commit()
    except IntegrityError:  # a concurrent duplicate of this same submit won the race
        db.rollback()
        return False
    return True
