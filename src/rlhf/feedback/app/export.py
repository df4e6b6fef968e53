"""Consensus over overlapping labels, and export through rlhf.data.comparisons.

Consensus rule, per regular (non-gold) task with at least one non-skipped label from a kept
annotator:
  1. each label's ranks become average ranks ("fractional ranking": a tie of two for first place
     puts both at 1.5), so labels that write ties differently (1,1,2 vs 1,1,3) count the same;
  2. each response's consensus score is the mean of its average ranks across annotators;
  3. ranks are re-derived from the scores, densely: the lowest score is rank 1 and equal scores
     (within 1e-9) are ties.
Gold tasks and skips never reach the export. With a gold-accuracy threshold, annotators below it
are dropped, and so are annotators with no gold answers at all (no evidence of their accuracy).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from rlhf.data.comparisons import Ranking, write_rankings, write_trl_pairs
from rlhf.errors import RLHFError
from rlhf.feedback.app.models import Project, Task
from rlhf.feedback.app.quality import project_labels, quality_report

FORMATS = ("rankings", "pairs")


def average_ranks(ranks: list[int]) -> list[float]:
    order = sorted(range(len(ranks)), key=lambda i: ranks[i])
    out = [0.0] * len(ranks)
    position = 0
    while position < len(order):
        end = position
        while end + 1 < len(order) and ranks[order[end + 1]] == ranks[order[position]]:
            end += 1
        for i in order[position:end + 1]:
            out[i] = (position + end) / 2 + 1
        position = end + 1
    return out


def dense_ranks(scores: list[float], tol: float = 1e-9) -> list[int]:
    distinct: list[float] = []
    for s in sorted(scores):
        if not distinct or s - distinct[-1] > tol:
            distinct.append(s)
    return [1 + next(i for i, d in enumerate(distinct) if abs(s - d) <= tol) for s in scores]


def consensus(label_ranks: list[list[int]]) -> list[int]:
    per_label = [average_ranks(r) for r in label_ranks]
    means = [sum(col) / len(col) for col in zip(*per_label)]
    return dense_ranks(means)


@dataclass
class ExportSummary:
    tasks: int
    rows: int
    annotators_kept: list[str]
    annotators_dropped: list[str]


def consensus_rankings(db: Session, project: Project,
                       min_gold_accuracy: float | None = None) -> tuple[list[Ranking], list[str], list[str]]:
    """(rankings, kept annotators, dropped annotators)."""
    report = quality_report(db, project)
    dropped = []
    if min_gold_accuracy is not None:
        dropped = sorted(name for name, s in report.annotators.items()
                         if s.gold_accuracy is None or s.gold_accuracy < min_gold_accuracy)
    tasks: dict[int, Task] = {}
    labels: dict[int, list[list[int]]] = defaultdict(list)
    annotators: dict[int, list[str]] = defaultdict(list)
    for task, username, label in project_labels(db, project):
        if task.is_gold or label.skipped or username in dropped:
            continue
        tasks[task.id] = task
        labels[task.id].append(label.ranks)
        annotators[task.id].append(username)
    rankings = [Ranking(tuple(task.prompt), tuple(task.responses), tuple(consensus(labels[task_id])),
                        id=task.external_id, meta={"annotators": annotators[task_id], "kind": task.kind})
                for task_id, task in sorted(tasks.items())]
    kept = sorted(set(report.annotators) - set(dropped))
    return rankings, kept, dropped


def export_project(db: Session, project: Project, out: str | Path, fmt: str = "rankings",
                   min_gold_accuracy: float | None = None) -> ExportSummary:
    if fmt not in FORMATS:
        raise RLHFError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if min_gold_accuracy is not None and not 0.0 <= min_gold_accuracy <= 1.0:
        raise RLHFError(f"--min-gold-accuracy must be in [0, 1], got {min_gold_accuracy}")
    rankings, kept, dropped = consensus_rankings(db, project, min_gold_accuracy)
    rows = (write_rankings if fmt == "rankings" else write_trl_pairs)(out, rankings)
    return ExportSummary(len(rankings), rows, kept, dropped)
