"""Reward-model evaluation on the world: agreement with gold, reward by prompt kind, best-of-N."""
from __future__ import annotations

import math

from rlhf.models.reward import score_texts
from rlhf.plots import pyplot
from rlhf.rollout import SamplingConfig, generate_texts
from rlhf.world import World


def best_of_n(policy, reward_model, tokenizer, world: World, prompts: list[dict], n_max: int = 64,
              sampling: SamplingConfig | None = None, seed: int = 0) -> dict:
    """Sample n_max responses per prompt once; for n = 1, 2, 4, ..., n_max the RM picks the best of the
    first n. Returns per-n mean gold and proxy (RM) score of the pick, the analytic KL of best-of-n
    (log n - (n-1)/n), and the rows of the largest n for a gold table."""
    sampling = sampling or SamplingConfig(max_new_tokens=32, temperature=1.0)
    flat_prompts = [p["prompt"] for p in prompts for _ in range(n_max)]
    texts = generate_texts(policy, tokenizer, flat_prompts, sampling, seed=seed)
    rm = score_texts(reward_model, tokenizer, flat_prompts, texts)
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
