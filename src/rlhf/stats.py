"""Statistics shared by training and evaluation: a binomial standard error and a reward model's pairwise
accuracy on rankings (with the calibration pairs that `plots.plot_calibration` draws)."""
from __future__ import annotations

import math

import torch


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of an accuracy p measured on n pairs (pairs taken as independent)."""
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def pairwise_accuracy(rankings, scores: list[list[float]]) -> tuple[float, list[tuple[float, int]]]:
    """Share of untied pairs ordered as labeled (a tie in score counts as wrong), and (predicted
    P(first better) = sigmoid(margin), first labeled better) for both orders of every pair."""
    hits, calib = 0, []
    for r, s in zip(rankings, scores):
        for i, j in r.pairs():
            hits += s[i] > s[j]
            p = float(torch.sigmoid(torch.tensor(s[i] - s[j], dtype=torch.float64)))
            calib += [(p, 1), (1 - p, 0)]
    n = sum(len(r.pairs()) for r in rankings)
    return (hits / n if n else float("nan")), calib

