"""Reward-model evaluation: on any comparisons file (`rlhf reward eval`: pairwise accuracy with its
standard error, accuracy by response length, score distribution, calibration), and on the world
(agreement with gold, reward by prompt kind, best-of-N)."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from rlhf.models.reward import score_texts
from rlhf.plots import calibration_rows, plot_calibration, pyplot
from rlhf.rollout import SamplingConfig, generate_texts
from rlhf.stats import pairwise_accuracy, standard_error
from rlhf.world import World


def length_buckets(pairs: list[dict], buckets: int) -> list[dict]:
    """Accuracy by the pair's mean response length in words, in `buckets` equal-count groups."""
    order = sorted(pairs, key=lambda x: x["words"])
    rows = []
    for b in range(buckets):
        sel = order[b * len(order) // buckets:(b + 1) * len(order) // buckets]
        if sel:
            acc = sum(x["correct"] for x in sel) / len(sel)
            rows.append({"words": f"{sel[0]['words']:g}-{sel[-1]['words']:g}", "pairs": len(sel),
                         "accuracy": acc, "se": standard_error(acc, len(sel))})
    return rows


def evaluate_comparisons(model, tokenizer, rankings, buckets: int = 4, batch_size: int = 32) -> dict:
    """Score every response of `rankings` (normalized) and measure the RM against the labels."""
    flat = score_texts(model, tokenizer, [list(r.prompt) for r in rankings for _ in r.responses],
                       [resp for r in rankings for resp in r.responses], batch_size=batch_size)
    scores, k = [], 0
    for r in rankings:
        scores.append(flat[k:k + r.k])
        k += r.k
    acc, calib = pairwise_accuracy(rankings, scores)
    pairs, chosen, rejected = [], [], []
    for r, s in zip(rankings, scores):
        words = [len(x.split()) for x in r.responses]
        for i, j in r.pairs():
            pairs.append({"correct": s[i] > s[j], "words": (words[i] + words[j]) / 2,
                          "longer_chosen": (words[i] > words[j]) - (words[i] < words[j]),
                          "longer_scored_higher": (words[i] > words[j]) == (s[i] > s[j])})
        best = min(r.ranks)
        chosen += [v for v, rank in zip(s, r.ranks) if rank == best]
        rejected += [v for v, rank in zip(s, r.ranks) if rank != best]
    unequal = [x for x in pairs if x["longer_chosen"] != 0]
    n = len(pairs)
    calib_rows = calibration_rows(calib)
    ece = sum(row["n"] * abs(row["predicted"] - row["observed"]) for row in calib_rows) / max(1, len(calib))

    def stats(v):
        t = torch.tensor(v, dtype=torch.float64)
        return {"n": len(v), "mean": float(t.mean()), "std": float(t.std()) if len(v) > 1 else 0.0}

    result = {"rankings": len(rankings), "pairs": n, "pairwise_accuracy": acc, "se": standard_error(acc, n),
              "ci95": [acc - 1.96 * standard_error(acc, n), acc + 1.96 * standard_error(acc, n)] if n else None,
              "mean_margin": sum(s[i] - s[j] for r, s in zip(rankings, scores) for i, j in r.pairs()) / max(1, n),
              "expected_calibration_error": ece,
              "labels_prefer_longer": sum(x["longer_chosen"] > 0 for x in unequal) / max(1, len(unequal)),
              "rm_prefers_longer": sum(x["longer_scored_higher"] for x in unequal) / max(1, len(unequal))}
    return {"result": result, "by_length": length_buckets(pairs, buckets),
            "scores": {"chosen": stats(chosen), "rejected": stats(rejected)}, "calibration": calib_rows,
            "_calib": calib, "_chosen": chosen, "_rejected": rejected}


def plot_comparisons_eval(ev: dict, plots: Path) -> None:
    """plots/scores.png (chosen vs rejected histogram), plots/calibration.png, plots/length.png."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    both = ev["_chosen"] + ev["_rejected"]
    edges = torch.linspace(min(both), max(both) + 1e-9, 31).tolist()
    ax.hist(ev["_chosen"], bins=edges, alpha=0.55, label="chosen (best-ranked)")
    ax.hist(ev["_rejected"], bins=edges, alpha=0.55, label="rejected")
    ax.set_xlabel("reward (normalized)")
    ax.set_title("score distribution")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "scores.png")
    plt.close(fig)
    plot_calibration(ev["_calib"], plots / "calibration.png")
    rows = ev["by_length"]
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=100)
    ax.errorbar(range(len(rows)), [r["accuracy"] for r in rows], yerr=[r["se"] for r in rows], fmt="o-", capsize=3)
    ax.axhline(0.5, color="k", ls="--", lw=0.7)
    ax.set_xticks(range(len(rows)), [r["words"] for r in rows], fontsize=7)
    ax.set_xlabel("mean response length of the pair (words)")
    ax.set_ylabel("pairwise accuracy")
    ax.set_title("accuracy by response length (± SE)")
    fig.tight_layout()
    fig.savefig(plots / "length.png")
    plt.close(fig)


def run_comparisons_eval(model_dir: str | Path, data: str | Path, out: str | Path, on_bad: str = "skip",
                         limit: int | None = None, buckets: int = 4, batch_size: int = 32) -> tuple[Path, dict]:
    """`rlhf reward eval`: load the RM and the comparisons file, evaluate, write summary.json, summary.md, plots."""
    from rlhf.data.comparisons import load_rankings
    from rlhf.models.lm import check_checkpoint, load_tokenizer
    from rlhf.models.reward import load_reward_model
    from rlhf.rundir import RunDir

    check_checkpoint(model_dir)  # before reading the data: a wrong -m fails at once
    rankings, report = load_rankings(data, on_bad=on_bad, limit=limit)
    if not any(r.pairs() for r in rankings):
        from rlhf.errors import RLHFError
        raise RLHFError(f"{data}: every comparison is a tie; nothing to evaluate")
    model, tokenizer = load_reward_model(model_dir), load_tokenizer(model_dir)
    t0 = time.time()
    ev = evaluate_comparisons(model, tokenizer, rankings, buckets, batch_size)
    ev["result"]["seconds"] = time.time() - t0
    with RunDir(out) as run_dir:
        plot_comparisons_eval(ev, run_dir.sub("plots"))
        sections = {"result": {"model": str(model_dir), "data": str(data), **ev["result"]},
                    "accuracy by response length": ev["by_length"],
                    "scores": [{"responses": k, **v} for k, v in ev["scores"].items()],
                    "calibration": ev["calibration"], "data": report.as_dict()}
        run_dir.write_summary("Reward model evaluation", sections)
    return Path(out), ev


def best_of_n(policy, reward_model, tokenizer, world: World, prompts: list[dict], n_max: int = 64,
              sampling: SamplingConfig | None = None, seed: int = 0, rm_tokenizer=None) -> dict:
    """Sample n_max responses per prompt once; for n = 1, 2, 4, ..., n_max the RM picks the best of the
    first n. Returns per-n mean gold and proxy (RM) score of the pick, the analytic KL of best-of-n
    (log n - (n-1)/n), and the rows of the largest n for a gold table. The RM reads the texts through
    `rm_tokenizer` (its own, e.g. an encoder's; default: the policy's)."""
    sampling = sampling or SamplingConfig(max_new_tokens=32, temperature=1.0)
    flat_prompts = [p["prompt"] for p in prompts for _ in range(n_max)]
    texts = generate_texts(policy, tokenizer, flat_prompts, sampling, seed=seed)
    rm = score_texts(reward_model, rm_tokenizer or tokenizer, flat_prompts, texts)
    gold = [world.score(p, t).total for p, t in zip(flat_prompts, texts)]
    curve = []
    ns = sorted({1, *[2 ** k for k in range(1, int(math.log2(n_max)) + 1)], n_max})
    picks_at_max = []
    for n in ns:
        g_sum, r_sum = 0.0, 0.0
        for i in range(len(prompts)):
            block = range(i * n_max, i * n_max + n)
            best = max(block, key=lambda j: rm[j])
            g_sum += gold[best]
            r_sum += rm[best]
            if n == n_max:
                picks_at_max.append(texts[best])
        curve.append({"n": n, "kl": math.log(n) - (n - 1) / n, "gold": g_sum / len(prompts),
                      "proxy": r_sum / len(prompts)})
    return {"curve": curve, "responses": picks_at_max}


def heldout_gold_accuracy(reward_model, tokenizer, world: World, rankings) -> dict:
    """On held-out comparisons: how often the RM orders two responses like the gold reward (pairs whose
    gold differs), how often the labels did, and the RM's scores grouped by prompt kind."""
    rm_agree = label_agree = total = 0
    by_kind: dict[str, list[float]] = {}
    flat = score_texts(reward_model, tokenizer, [list(r.prompt) for r in rankings for _ in r.responses],
                       [resp for r in rankings for resp in r.responses])
    offset = 0
    for r in rankings:
        prompt = list(r.prompt)
        judged = [world.score(prompt, resp) for resp in r.responses]
        gold, kind = [s.total for s in judged], judged[0].kind
        rm, offset = flat[offset:offset + r.k], offset + r.k
        by_kind.setdefault(kind, []).extend(rm)
        for i in range(r.k):
            for j in range(i + 1, r.k):
                if gold[i] != gold[j]:
                    total += 1
                    rm_agree += (rm[i] - rm[j]) * (gold[i] - gold[j]) > 0
                    label_agree += r.ranks[i] != r.ranks[j] and (r.ranks[i] < r.ranks[j]) == (gold[i] > gold[j])
    return {"rm_gold_accuracy": rm_agree / max(1, total), "label_gold_accuracy": label_agree / max(1, total),
            "gold_pairs": total, "rm_by_kind": by_kind}


def plot_reward_eval(curve: list[dict], rm_by_kind: dict[str, list[float]], path) -> None:
    """Left: gold and proxy of the RM's pick among n samples. Right: RM score distribution per prompt kind."""
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100)
    ns = [c["n"] for c in curve]
    a.plot(ns, [c["gold"] for c in curve], "o-", label="gold of RM's pick")
    a.plot(ns, [c["proxy"] for c in curve], "s--", label="RM score of pick")
    a.set_xscale("log", base=2)
    a.set_xlabel("n (best-of-n)")
    a.set_title("best-of-n selection")
    a.legend(fontsize=7)
    a.grid(alpha=0.3)
    kinds = sorted(rm_by_kind)
    b.boxplot([rm_by_kind[k] for k in kinds])
    b.set_xticks(range(1, len(kinds) + 1), kinds, fontsize=7, rotation=15)
    b.set_title("RM score by prompt kind (held-out)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
