"""`rlhf label simulate`: sample K responses per world prompt from a policy and have a simulated
labeler pool rank them, writing the ranking JSONL that `rlhf reward` trains on."""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path

from rlhf.data.comparisons import write_rankings
from rlhf.data.filters import distinct_responses
from rlhf.feedback.labelers import LabelerPool, LabelerPoolConfig, features, label_rankings
from rlhf.models.lm import load_causal_lm, load_tokenizer
from rlhf.progress import progress_bar
from rlhf.rollout import SamplingConfig, generate_texts
from rlhf.rundir import RunDir
from rlhf.world import World, WorldConfig


@dataclass
class SimulateConfig:
    out: str = "runs/labels"
    seed: int = 0
    policy: str = "runs/sft/model"
    world: WorldConfig = field(default_factory=WorldConfig)
    n_prompts: int = 1200
    k: int = 4
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=32, temperature=0.7))
    pool: LabelerPoolConfig = field(default_factory=LabelerPoolConfig)


def sample_items(world: World, model, tokenizer, prompts: list[dict], k: int, sampling: SamplingConfig,
                 seed: int, show_progress: bool = True) -> tuple[list[dict], dict]:
    """K samples per prompt, duplicates and empty responses dropped (counted), gold-scored."""
    texts: list[str] = []
    chunk = 64
    flat = [p["prompt"] for p in prompts for _ in range(k)]
    with progress_bar("sample", len(flat), show_progress) as bar:
        for i in range(0, len(flat), chunk):
            texts += generate_texts(model, tokenizer, flat[i:i + chunk], sampling, seed=seed + i)
            bar.advance(len(flat[i:i + chunk]))
    items, dropped = [], {"duplicate_responses": 0, "empty_responses": 0, "prompts_with_fewer_than_2": 0}
    for n, p in enumerate(prompts):
        responses, empty, repeated = distinct_responses(texts[n * k:(n + 1) * k])
        dropped["empty_responses"] += empty
        dropped["duplicate_responses"] += repeated
        if len(responses) < 2:
            dropped["prompts_with_fewer_than_2"] += 1
            continue
        items.append({"id": f"p{n}", "prompt": p["prompt"], "kind": p["kind"], "responses": responses,
                      "gold": [world.score(p["prompt"], r).total for r in responses]})
    return items, dropped


def within_prompt_pairs(pool: LabelerPool, items: list[dict]) -> list[tuple[tuple, tuple]]:
    """Feature pairs of every two responses to the same prompt: the comparisons labelers will see."""
    out = []
    for it in items:
        feats = [features(pool, g, r) for g, r in zip(it["gold"], it["responses"])]
        out += [(feats[i], feats[j]) for i, j in itertools.combinations(range(len(feats)), 2)]
    return out


def measured_agreement(pool: LabelerPool, pairs, n: int, seed: int) -> float:
    """Two distinct labelers label the same pair, n times: how often do they agree?"""
    rng = random.Random(seed)
    agree = 0
    for _ in range(n):
        a, b = rng.choice(pairs)
        l1, l2 = rng.sample(pool.labelers, 2)
        agree += pool.compare(l1, a, b, rng) == pool.compare(l2, a, b, rng)
    return agree / n


def run(cfg: SimulateConfig, show_progress: bool = True) -> Path:
    world = World(cfg.world)
    tokenizer, model = load_tokenizer(cfg.policy), load_causal_lm(cfg.policy)
    prompts = world.prompts("train")
    rng = random.Random(cfg.seed)
    prompts = rng.sample(prompts, min(cfg.n_prompts, len(prompts)))
    with RunDir(cfg.out, cfg) as run_dir:
        items, dropped = sample_items(world, model, tokenizer, prompts, cfg.k, cfg.sampling, cfg.seed, show_progress)
        pool = LabelerPool.build(cfg.pool)
        pairs = within_prompt_pairs(pool, items)
        temperature = cfg.pool.temperature if cfg.pool.temperature is not None else pool.calibrate(pairs)
        pool.temperature = temperature
        rankings = label_rankings(pool, items, cfg.seed)
        write_rankings(run_dir.sub("comparisons.jsonl"), rankings)
        agreement = measured_agreement(pool, pairs, 2000, cfg.seed)
        gold_agree = [(r.meta["gold"][i] > r.meta["gold"][j]) for r in rankings for i, j in r.pairs()
                      if r.meta["gold"][i] != r.meta["gold"][j]]
        result = {"prompts": len(prompts), "rankings": len(rankings), "pairs": sum(len(r.pairs()) for r in rankings),
                  "pool_temperature": temperature, "target_agreement": cfg.pool.target_agreement,
                  "measured_inter_labeler_agreement_2000_pairs": agreement,
                  "label_agreement_with_gold": sum(gold_agree) / max(1, len(gold_agree)), **dropped}
        run_dir.write_summary("Simulated labels", {"result": result,
                                                   "labelers": [vars(labeler) for labeler in pool.labelers]})
    return Path(cfg.out)
