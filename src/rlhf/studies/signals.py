"""`rlhf study signals RUN...`: how well PPO's gold-free signals find the gold reward's peak.

A user without a gold reward watches what PPO logs every iteration: the KL spent, the reward-model
ensemble's disagreement on the policy's samples, and drifting abstention/refusal rates. On the world the
gold reward is logged too, so each rule that would have stopped the run can be judged: the gold reward
(smoothed over 5 iterations) at the step the rule stops, against the gold peak and the run's end.
Run it on PPO runs pushed past their peak (a small KL penalty, a larger learning rate, kl_budget=0).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhf.errors import RLHFError

# rule -> (metric, what the rule compares): a stop once the metric passes a threshold
RULES = {
    "KL budget 2 nats": ("kl", 2.0, "absolute"),
    "KL budget 3 nats": ("kl", 3.0, "absolute"),
    "ensemble disagreement 1.25x start": ("ens_disagreement", 1.25, "relative"),
    "abstain + refuse rate 2x start": ("rate_abstain+rate_refuse", 2.0, "relative"),
}


def _series(rows: list[dict], metric: str) -> np.ndarray | None:
    names = metric.split("+")
    if not all(all(n in r for n in names) for r in rows):
        return None
    return np.array([sum(r[n] for n in names) for r in rows], dtype=float)


def trailing_mean(x: np.ndarray, k: int = 3) -> np.ndarray:
    return np.array([x[max(0, i - k + 1): i + 1].mean() for i in range(len(x))])


def centered_mean(x: np.ndarray, k: int = 5) -> np.ndarray:
    return np.array([x[max(0, i - k // 2): i + k // 2 + 1].mean() for i in range(len(x))])


def stop_index(values: np.ndarray, threshold: float, kind: str) -> int | None:
    """The first iteration (0-based) at which the rule stops, as PPO reads it: the mean of the last 3
    values against the threshold (relative: a multiple of the first 3 values' mean, floored at 0.05)."""
    smooth = trailing_mean(values)
    bar = threshold if kind == "absolute" else threshold * max(0.05, float(values[:3].mean()))
    start = 0 if kind == "absolute" else 3
    hits = [i for i in range(start, len(values)) if smooth[i] > bar]
    return hits[0] if hits else None


def track(rows: list[dict]) -> dict:
    """Rows of a PPO metrics.jsonl (with "gold") -> the gold peak and, per rule, where it stops and the gold
    there. Row s holds samples of the policy after s - 1 updates; a rule that fires on row s stops before
    training on it, so the run ends with exactly that policy, and row s's gold is its gold."""
    rows = [r for r in rows if "gold" in r and "kl" in r]
    if len(rows) < 5:
        raise RLHFError("signals: a PPO run with the gold reward logged on at least 5 iterations is needed")
    steps = [r["step"] for r in rows]
    gold = centered_mean(np.array([r["gold"] for r in rows], dtype=float))
    peak = int(np.argmax(gold))
    out = {"gold_peak": {"step": steps[peak], "gold": float(gold[peak])},
           "end": {"step": steps[-1], "gold": float(gold[-1])}, "rules": {}}
    for name, (metric, threshold, kind) in RULES.items():
        values = _series(rows, metric)
        if values is None:
            continue
        hit = stop_index(values, threshold, kind)
        at = hit if hit is not None else len(rows) - 1
        out["rules"][name] = {"stops": hit is not None, "step": steps[at], "gold": float(gold[at]),
                              "gold_below_peak": float(gold[peak] - gold[at])}
    return out


def run(runs: list[Path]) -> list[dict]:
    table = []
    for run_dir in runs:
        path = Path(run_dir) / "metrics.jsonl"
        if not path.is_file():
            raise RLHFError(f"signals: {path} not found (give PPO run directories)")
        result = track([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
        row = {"run": str(run_dir), "gold peak": f"{result['gold_peak']['gold']:+.2f} @ {result['gold_peak']['step']}",
               "end": f"{result['end']['gold']:+.2f} @ {result['end']['step']}"}
        for name, r in result["rules"].items():
            row[name] = f"{r['gold']:+.2f} @ {r['step']}" + ("" if r["stops"] else " (no stop)")
        table.append(row)
    return table
