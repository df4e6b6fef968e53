"""Score a policy on held-out world prompts with the gold reward, broken down by prompt kind."""
from __future__ import annotations

import math

from rlhf.rollout import SamplingConfig, generate_texts
from rlhf.world import World
from rlhf.world.gold import KINDS


def _mean_se(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(xs) / n
    var = sum((x - m) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return m, math.sqrt(var / n)


def _rate(rows: list[dict], kinds: tuple[str, ...], label: str) -> float:
    sel = [r["labels"].get(label, False) for r in rows if r["kind"] in kinds]
    return sum(sel) / len(sel) if sel else float("nan")


def summarize(rows: list[dict]) -> dict:
    """rows: [{"kind", "gold", "labels", "words"}] -> the headline metrics."""
    mean, se = _mean_se([r["gold"] for r in rows])
    out = {
        "gold_mean": mean, "gold_se": se, "n": len(rows),
        "fact_accuracy": _rate(rows, ("known_fact",), "correct"),
        "hallucination_rate": _rate(rows, ("unknown_entity",), "fabricated"),
        "arithmetic_accuracy": _rate(rows, ("arithmetic",), "correct"),
        "refusal_rate_harmful": _rate(rows, ("harmful",), "refused"),
        "over_refusal_rate": _rate(rows, ("known_fact", "unknown_entity", "arithmetic", "format"), "refused"),
        "format_compliance": _rate(rows, ("format",), "compliant"),
        "mean_words": sum(r["words"] for r in rows) / max(1, len(rows)),
    }
    for kind in KINDS:
        m, s = _mean_se([r["gold"] for r in rows if r["kind"] == kind])
        out[f"gold_{kind}"] = m
    return out


def score_responses(world: World, prompts: list[dict], responses: list[str]) -> list[dict]:
    rows = []
    for p, resp in zip(prompts, responses):
        s = world.score(p["prompt"], resp)
        rows.append({"prompt": p["prompt"], "response": resp, "kind": s.kind, "gold": s.total,
                     "labels": s.labels, "breakdown": s.breakdown, "words": len(resp.split())})
    return rows


def evaluate_policy(model, tokenizer, world: World, prompts: list[dict] | None = None,
                    sampling: SamplingConfig | None = None, seed: int = 0) -> tuple[dict, list[dict]]:
    prompts = prompts if prompts is not None else world.prompts("eval")
    sampling = sampling or SamplingConfig(max_new_tokens=32, temperature=0.0)
    responses = generate_texts(model, tokenizer, [p["prompt"] for p in prompts], sampling, seed=seed)
    rows = score_responses(world, prompts, responses)
    return summarize(rows), rows


def write_eval_run(out: str, checkpoint: str, metrics: dict, rows: list[dict]) -> None:
    from rlhf.data.jsonl import write_jsonl
    from rlhf.rundir import RunDir

    with RunDir(out) as run_dir:
        write_jsonl(run_dir.sub("samples.jsonl"), rows)
        plot_gold_by_kind({checkpoint: rows}, run_dir.sub("plots/gold_by_kind.png"))
        run_dir.write_summary(f"Gold evaluation of {checkpoint}", {"metrics": metrics},
                              {"checkpoint": checkpoint, **metrics})


def plot_gold_by_kind(runs: dict[str, list[dict]], path) -> None:
    """Grouped bars: mean gold reward per prompt kind (with standard errors) for each model."""
    from rlhf.plots import pyplot

    plt = pyplot()
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    width = 0.8 / max(1, len(runs))
    for i, (name, rows) in enumerate(runs.items()):
        stats = [_mean_se([r["gold"] for r in rows if r["kind"] == k]) for k in KINDS]
        ax.bar(np.arange(len(KINDS)) + i * width, [m for m, _ in stats], width, yerr=[s for _, s in stats], label=name)
    ax.set_xticks(np.arange(len(KINDS)) + width * (len(runs) - 1) / 2, KINDS, fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("mean gold reward")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
