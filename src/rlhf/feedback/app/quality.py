"""Label quality: accuracy on hidden gold tasks and agreement between annotators.

- Gold accuracy of one label: the share of the gold ranking's untied pairs that the annotator
  ordered the same way (a tie where gold has an order counts as wrong). An annotator's gold
  accuracy pools all their gold pairs.
- Pairwise agreement: for every regular task two annotators both ranked and every pair of its
  responses, do they prefer the same one (or both call it a tie)? Reported as the share agreed.
- Krippendorff's alpha (interval metric) on the 1-7 Likert ratings, a unit being one response of
  one task. An annotator's alpha is computed over the units they rated, with all raters of them.
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhf.feedback.app.models import Assignment, Label, Project, Task, User


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def preferences(ranks: list[int]) -> list[int]:
    """For each response pair (i < j): +1 if i is better, -1 if j is, 0 for a tie."""
    return [_sign(ranks[j] - ranks[i]) for i, j in itertools.combinations(range(len(ranks)), 2)]


def gold_hits(ranks: list[int], gold: list[int]) -> tuple[int, int]:
    """(agreeing pairs, untied gold pairs)."""
    pairs = [(a, g) for a, g in zip(preferences(ranks), preferences(gold)) if g != 0]
    return sum(a == g for a, g in pairs), len(pairs)


def krippendorff_alpha_interval(units: list[list[float]]) -> float | None:
    """Alpha = 1 - D_o / D_e with squared differences; units with fewer than two values are not
    pairable and drop out. None when there is nothing to compare or no variation at all."""
    units = [u for u in units if len(u) >= 2]
    values = [v for u in units for v in u]
    n = len(values)
    if n < 2:
        return None
    observed = sum(sum((a - b) ** 2 for a, b in itertools.permutations(u, 2)) / (len(u) - 1) for u in units) / n
    mean = sum(values) / n
    # sum over all ordered pairs i != j of (v_i - v_j)^2 equals 2 n * sum (v - mean)^2
    expected = 2 * n * sum((v - mean) ** 2 for v in values) / (n * (n - 1))
    if expected == 0:
        return None
    return 1 - observed / expected


@dataclass
class AnnotatorStats:
    username: str
    labels: int = 0
    skips: int = 0
    gold_agree: int = 0
    gold_pairs: int = 0
    pair_agree: int = 0
    pair_total: int = 0
    alpha: float | None = None

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_agree / self.gold_pairs if self.gold_pairs else None

    @property
    def agreement(self) -> float | None:
        return self.pair_agree / self.pair_total if self.pair_total else None


@dataclass
class QualityReport:
    annotators: dict[str, AnnotatorStats] = field(default_factory=dict)
    tasks_labeled: int = 0
    tasks_total: int = 0
    gold_tasks: int = 0
    agreement: float | None = None
    alpha: float | None = None
    rating_counts: list[int] = field(default_factory=lambda: [0] * 7)

    @property
    def gold_accuracy(self) -> float | None:
        agree = sum(a.gold_agree for a in self.annotators.values())
        total = sum(a.gold_pairs for a in self.annotators.values())
        return agree / total if total else None


def project_labels(db: Session, project: Project) -> list[tuple[Task, str, Label]]:
    """(task, annotator username, label) for every answered assignment of the project."""
    return list(db.execute(select(Task, User.username, Label)
                           .join(Assignment, Assignment.task_id == Task.id)
                           .join(User, User.id == Assignment.user_id)
                           .join(Label, Label.assignment_id == Assignment.id)
                           .where(Task.project_id == project.id)
                           .order_by(Task.id, User.username)).tuples())


def quality_report(db: Session, project: Project) -> QualityReport:
    report = QualityReport()
    tasks = db.scalars(select(Task).where(Task.project_id == project.id)).all()
    report.tasks_total = sum(not t.is_gold for t in tasks)
    report.gold_tasks = sum(t.is_gold for t in tasks)
    by_task: dict[int, list[tuple[str, Label]]] = defaultdict(list)
    for task, username, label in project_labels(db, project):
        stats = report.annotators.setdefault(username, AnnotatorStats(username))
        if label.skipped:
            stats.skips += 1
            continue
        stats.labels += 1
        if task.is_gold:
            agree, total = gold_hits(label.ranks, task.gold_ranks)
            stats.gold_agree += agree
            stats.gold_pairs += total
            continue
        by_task[task.id].append((username, label))
        for rating in label.ratings or []:  # clip pairs have no ratings
            report.rating_counts[rating - 1] += 1
    report.tasks_labeled = len(by_task)

    agree_all = total_all = 0
    units: dict[tuple[int, int], list[tuple[str, int]]] = defaultdict(list)
    for task_id, entries in by_task.items():
        for (user_a, label_a), (user_b, label_b) in itertools.combinations(entries, 2):
            prefs = list(zip(preferences(label_a.ranks), preferences(label_b.ranks)))
            agree = sum(a == b for a, b in prefs)
            for user in (user_a, user_b):
                report.annotators[user].pair_agree += agree
                report.annotators[user].pair_total += len(prefs)
            agree_all += agree
            total_all += len(prefs)
        for username, label in entries:
            for index, rating in enumerate(label.ratings or []):
                units[(task_id, index)].append((username, rating))
    report.agreement = agree_all / total_all if total_all else None
    report.alpha = krippendorff_alpha_interval([[r for _, r in u] for u in units.values()])
    for username, stats in report.annotators.items():
        theirs = [[r for _, r in u] for u in units.values() if any(name == username for name, _ in u)]
        stats.alpha = krippendorff_alpha_interval(theirs)
    return report
